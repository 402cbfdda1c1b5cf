#!/usr/bin/env bash
# Self-test of the NAT rig (tools/nat-rig.sh): proves the router really maps ports with UPnP
# IGD, NAT-PMP and PCP, that leases expire, that restart-router loses state, and that the
# protocol switches work. Also a worked example for the NAT traversal tests to copy.
#
#   tools/nat-rig/selftest.sh            against a rig that is up (ZP_RIG selects which)
#   tools/nat-rig/selftest.sh --fresh    brings the rig up first and down afterwards
#
# Env: ZP_RIG (as for nat-rig.sh), SELFTEST_LEASE (short lease in seconds, default 10).
# Leaves the router running with all protocols and no mappings. Exit 0 iff all checks pass.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
rig=$here/../nat-rig.sh
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
LEASE=${SELFTEST_LEASE:-10}
[[ "$LEASE" =~ ^[0-9]+$ ]] && [ "$LEASE" -ge 2 ] && [ "$LEASE" -le 120 ] || { echo "SELFTEST_LEASE: 2..120" >&2; exit 2; }
fresh=no
case "${1-}" in
    --fresh) fresh=yes ;;
    "") ;;
    *) echo "usage: $0 [--fresh]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 1; }

t_start=$(date +%s%N)
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

if [ "$fresh" = yes ]; then
    t0=$(date +%s%N)
    "$rig" up
    echo "# up took $(ms "$t0") ms"
fi
envfile=${ZP_RIG_ENV:-/run/zeppelin-nat-rig${ZP_RIG:+-$ZP_RIG}.env}
[ -f "$envfile" ] || { echo "$0: no rig ($envfile missing): run tools/nat-rig.sh up, or use --fresh" >&2; exit 1; }
# shellcheck disable=SC1090
. "$envfile"

tmp=$(mktemp -d /tmp/zp-nat-selftest.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
    if [ "$fresh" = yes ]; then "$rig" down || true; fi
}
trap cleanup EXIT

lan() { ip netns exec "$ZP_NS_LAN" "$@"; }
wan() { ip netns exec "$ZP_NS_WAN" "$@"; }
upnpc_u() { lan upnpc -u "$ZP_UPNP_ROOTDESC_URL" "$@"; }
pmp() { lan "$PY" "$here/pmp.py" "$@"; }

fails=0 n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
check() { # check DESCRIPTION COMMAND...: ok if the command succeeds
    local d=$1; shift
    if "$@" >"$tmp/out" 2>&1; then ok "$d"; else not_ok "$d"; sed 's/^/#   /' "$tmp/out"; fi
}

# start_banner NAMESPACE IP PORT...: a tcp_banner.py server, waited for until it is ready.
# (`ip netns exec` directly, not through a shell function, so $! is the server's own pid.)
start_banner() {
    local ns=$1 ip=$2 log i; shift 2
    log="$tmp/banner-$ns-$1.log"
    ip netns exec "$ns" "$PY" -u "$here/tcp_banner.py" "$ip" "$@" >"$log" 2>&1 &
    pids+=($!)
    for i in $(seq 100); do grep -q ready "$log" && return 0; sleep 0.05; done
    cat "$log" >&2; return 1
}
# reach EPORT IPORT: from the internet (zp-wan), the external address at EPORT gets the LAN
# server on IPORT.
reach() {
    local got
    got=$(wan "$PY" -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.makefile().readline().strip())' "$ZP_EXTERNAL_IP" "$1" 2 2>&1) || { echo "$got"; return 1; }
    [ "$got" = "zp-banner $2 $ZP_WAN_IP" ] || { echo "got: $got"; return 1; }
}
# closed EPORT: from the internet, nothing answers at the external address's EPORT.
closed() { ! wan "$PY" -c '
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).recv(1)' "$ZP_EXTERNAL_IP" "$1" >/dev/null 2>&1; }
has_mapping() { upnpc_u -l 2>/dev/null | grep -Eq " $1 *-> *$ZP_LAN_IP:$2 "; }
no_mapping() { ! upnpc_u -l 2>/dev/null | grep -Eq "^ *[0-9]+ +[A-Z]+ +$1->"; }
grep_out() { local re=$1; shift; local o; o=$("$@" 2>&1) || true; echo "$o"; grep -Eq -- "$re" <<<"$o"; }
# field KEY LINE: value of key=value in LINE
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "# rig '${ZP_RIG:-default}': LAN $ZP_LAN_IP -> router $ZP_ROUTER_LAN_IP / external $ZP_EXTERNAL_IP -> WAN $ZP_WAN_IP"
"$rig" restart-router >/dev/null 2>&1   # known state: all protocols, no mappings
. "$envfile"

start_banner "$ZP_NS_LAN" "$ZP_LAN_IP" 8080 8081 8082 8083 8084 8085
start_banner "$ZP_NS_WAN" "$ZP_WAN_IP" 9000

# --- plain NAT
check "outbound: LAN reaches the internet, masqueraded as the external address" \
    grep_out "^zp-banner 9000 $ZP_EXTERNAL_IP\$" lan "$PY" -c '
import socket, sys
print(socket.create_connection((sys.argv[1], 9000), timeout=2).makefile().readline().strip())' "$ZP_WAN_IP"
check "inbound: unmapped external port is closed" closed 18080

# --- UPnP IGD
check "UPnP: SSDP discovery finds the IGD and reports the external address" \
    grep_out "ExternalIPAddress = $ZP_EXTERNAL_IP\$" lan timeout 15 upnpc -s
check "UPnP: AddPortMapping 18080 -> $ZP_LAN_IP:8080" \
    grep_out "is redirected to internal $ZP_LAN_IP:8080" upnpc_u -e zp-selftest -a "$ZP_LAN_IP" 8080 18080 TCP 3600
check "UPnP: mapping listed" has_mapping 18080 8080
check "UPnP: internet reaches the LAN server through 18080" reach 18080 8080
check "UPnP: DeletePortMapping" upnpc_u -d 18080 TCP
check "UPnP: deleted mapping is closed again" closed 18080

# --- NAT-PMP
out=$(pmp natpmp-addr "$ZP_ROUTER_LAN_IP" 2>&1 || true)
check "NAT-PMP: external address is $ZP_EXTERNAL_IP ($out)" test "$(field external "$out")" = "$ZP_EXTERNAL_IP"
out=$(pmp natpmp-map "$ZP_ROUTER_LAN_IP" tcp 8081 28081 3600 2>&1 || true)
check "NAT-PMP: map 28081 -> :8081 ($out)" test "$(field eport "$out")" = 28081
check "NAT-PMP: internet reaches the LAN server through 28081" reach 28081 8081

# --- PCP
out=$(pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8082 38082 3600 2>&1 || true)
check "PCP: MAP 38082 -> :8082 ($out)" test "$(field eport "$out"):$(field external "$out")" = "38082:$ZP_EXTERNAL_IP"
check "PCP: internet reaches the LAN server through 38082" reach 38082 8082

# --- short leases expire
upnpc_u -e zp-short -a "$ZP_LAN_IP" 8083 18083 TCP "$LEASE" >/dev/null 2>&1 || true
o1=$(pmp natpmp-map "$ZP_ROUTER_LAN_IP" tcp 8084 28084 "$LEASE" 2>&1 || true)
o2=$(pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8085 38085 "$LEASE" 2>&1 || true)
t_lease=$(date +%s%N)
check "leases: ${LEASE}s mappings granted (NAT-PMP: $o1; PCP: $o2)" \
    test "$(field lifetime "$o1"):$(field lifetime "$o2")" = "$LEASE:$LEASE"
check "leases: UPnP ${LEASE}s mapping works" reach 18083 8083
check "leases: NAT-PMP ${LEASE}s mapping works" reach 28084 8084
check "leases: PCP ${LEASE}s mapping works" reach 38085 8085
gone=no
for i in $(seq $(( (LEASE + 10) * 4 ))); do
    if no_mapping 18083 && no_mapping 28084 && no_mapping 38085; then gone=yes; break; fi
    sleep 0.25
done
check "leases: miniupnpd removed all three after $(ms "$t_lease") ms (lease ${LEASE}s)" test "$gone" = yes
check "leases: expired UPnP port closed" closed 18083
check "leases: expired NAT-PMP port closed" closed 28084
check "leases: expired PCP port closed" closed 38085
check "leases: long mappings untouched" has_mapping 28081 8081

# --- router restart loses state
e_before=$(field epoch "$(pmp natpmp-addr "$ZP_ROUTER_LAN_IP" 2>&1 || true)")
pid_before=$ZP_ROUTER_PID
t0=$(date +%s%N)
"$rig" restart-router >/dev/null 2>&1
echo "# restart-router took $(ms "$t0") ms"
. "$envfile"
check "restart: new router pid ($pid_before -> $ZP_ROUTER_PID)" test "$pid_before" != "$ZP_ROUTER_PID"
check "restart: NAT-PMP mapping is gone" no_mapping 28081
check "restart: PCP mapping is gone" no_mapping 38082
check "restart: NAT-PMP port closed" closed 28081
check "restart: PCP port closed" closed 38082
e_after=$(field epoch "$(pmp natpmp-addr "$ZP_ROUTER_LAN_IP" 2>&1 || true)")
check "restart: NAT-PMP epoch went back ($e_before -> $e_after)" test "${e_after:-x}" -lt "${e_before:-0}"

# --- protocol switches
export PMP_TIMEOUT=1
"$rig" restart-router --no-upnp >/dev/null 2>&1
check "--no-upnp: no UPnP" eval '! upnpc_u -s >/dev/null 2>&1'
check "--no-upnp: NAT-PMP answers" pmp natpmp-addr "$ZP_ROUTER_LAN_IP"
check "--no-upnp: PCP answers" pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8082 38082 60
"$rig" restart-router --no-natpmp >/dev/null 2>&1
check "--no-natpmp: UPnP answers" grep_out "ExternalIPAddress = $ZP_EXTERNAL_IP\$" upnpc_u -s
check "--no-natpmp: no NAT-PMP" eval '! pmp natpmp-addr "$ZP_ROUTER_LAN_IP"'
check "--no-natpmp: PCP answers" pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8082 38082 60
"$rig" restart-router --no-pcp >/dev/null 2>&1
check "--no-pcp: NAT-PMP answers" pmp natpmp-addr "$ZP_ROUTER_LAN_IP"
check "--no-pcp: no PCP" eval '! pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8082 38082 60'
"$rig" restart-router --no-natpmp --no-pcp >/dev/null 2>&1
check "UPnP only: UPnP answers" grep_out "ExternalIPAddress = $ZP_EXTERNAL_IP\$" upnpc_u -s
check "UPnP only: no NAT-PMP" eval '! pmp natpmp-addr "$ZP_ROUTER_LAN_IP"'
check "UPnP only: no PCP" eval '! pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8082 38082 60'
"$rig" stop-router >/dev/null 2>&1
check "stop-router: no UPnP" eval '! upnpc_u -s >/dev/null 2>&1'
check "stop-router: no NAT-PMP" eval '! pmp natpmp-addr "$ZP_ROUTER_LAN_IP"'
check "stop-router: no PCP" eval '! pmp pcp-map "$ZP_ROUTER_LAN_IP" "$ZP_LAN_IP" tcp 8082 38082 60'
check "stop-router: NAT still works outbound" \
    grep_out "^zp-banner 9000 $ZP_EXTERNAL_IP\$" lan "$PY" -c '
import socket, sys
print(socket.create_connection((sys.argv[1], 9000), timeout=2).makefile().readline().strip())' "$ZP_WAN_IP"
"$rig" restart-router >/dev/null 2>&1

echo "# $((n - fails))/$n passed in $(ms "$t_start") ms"
[ "$fails" = 0 ]
