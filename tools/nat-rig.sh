#!/usr/bin/env bash
# A real home-router rig for NAT traversal tests: Debian's miniupnpd (UPnP IGD, NAT-PMP, PCP)
# running in a network namespace between a "LAN" namespace (where the worker runs) and a
# "WAN" namespace (a host on the internet). See tools/nat-rig/README.md.
#
#   tools/nat-rig.sh up [--no-upnp] [--no-natpmp] [--no-pcp]   create the rig (idempotent)
#   tools/nat-rig.sh down                                        remove everything it made
#   tools/nat-rig.sh status                                      print what exists
#   tools/nat-rig.sh restart-router [--no-upnp] [--no-natpmp] [--no-pcp] [--keep-state]
#                                        router reboot: mappings and the epoch are lost
#   tools/nat-rig.sh stop-router                 no UPnP/NAT-PMP/PCP service at all
#   tools/nat-rig.sh env                         print the facts file (for `source`)
#
# Topology (one rig; N = ZP_RIG_NET):
#
#   [ns zp-lan]  eth0 192.168.N.2/24 ---- lan0 192.168.N.1/24  [ns zp-router]
#                default via 192.168.N.1         wan0 198.20.N.1/24  (= external address)
#                                                  |  default via 198.20.N.2
#                                    [ns zp-wan]  eth0 198.20.N.2/24  (no default route)
#
# The WAN subnet is public-looking on purpose: miniupnpd 2.3.1 refuses every mapping while
# its WAN address is private/reserved. It exists only on veths between these namespaces,
# none of which has a link to the host or any physical interface, so nothing can leave.
#
# Environment (all optional):
#   ZP_RIG           suffix for names, [a-z0-9]{1,8}; lets several rigs run in parallel
#   ZP_RIG_NET       third octet of the subnets, 1..254 (default: ZP_RIG if numeric, else
#                    derived from it; 1 without ZP_RIG). Rigs are isolated from each other,
#                    so equal subnets in two rigs are harmless, only confusing in logs.
#   ZP_LAN_SUBNET    first three octets of the LAN /24   (default 192.168.$ZP_RIG_NET)
#   ZP_WAN_SUBNET    first three octets of the WAN /24   (default 198.20.$ZP_RIG_NET)
#   ZP_NS_LAN, ZP_NS_ROUTER, ZP_NS_WAN   namespace names (default zp-lan[-$ZP_RIG] ...)
#   ZP_UPNP_HTTP_PORT   miniupnpd's HTTP (SOAP) port on the LAN side (default 5000)
#   ZP_PCP_MIN_LIFETIME / ZP_PCP_MAX_LIFETIME   PCP lifetime clamp (default 1 / 86400)
#   ZP_RIG_RUNDIR    router state dir (default /run/zeppelin-nat-rig[-$ZP_RIG])
#   ZP_RIG_ENV       facts file       (default /run/zeppelin-nat-rig[-$ZP_RIG].env)
set -euo pipefail

prog=${0##*/}
die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- configuration
ZP_RIG=${ZP_RIG-}
[[ "$ZP_RIG" =~ ^[a-z0-9]{0,8}$ ]] || die "ZP_RIG must be 1-8 characters of [a-z0-9] (got '$ZP_RIG')"
sfx=${ZP_RIG:+-$ZP_RIG}

if [ -n "${ZP_RIG_NET-}" ]; then
    net=$ZP_RIG_NET
elif [ -z "$ZP_RIG" ]; then
    net=1
elif [[ "$ZP_RIG" =~ ^[0-9]{1,3}$ ]] && [ "$((10#$ZP_RIG))" -ge 1 ] && [ "$((10#$ZP_RIG))" -le 254 ]; then
    net=$((10#$ZP_RIG))
else
    net=$(( $(printf '%s' "$ZP_RIG" | cksum | cut -d' ' -f1) % 253 + 2 ))
fi
[[ "$net" =~ ^[0-9]{1,3}$ ]] && [ "$((10#$net))" -ge 1 ] && [ "$((10#$net))" -le 254 ] \
    || die "ZP_RIG_NET must be 1..254 (got '$net')"
net=$((10#$net))

NS_LAN=${ZP_NS_LAN:-zp-lan$sfx}
NS_ROUTER=${ZP_NS_ROUTER:-zp-router$sfx}
NS_WAN=${ZP_NS_WAN:-zp-wan$sfx}
LAN_SUBNET=${ZP_LAN_SUBNET:-192.168.$net}
WAN_SUBNET=${ZP_WAN_SUBNET:-198.20.$net}
HTTP_PORT=${ZP_UPNP_HTTP_PORT:-5000}
PCP_MIN=${ZP_PCP_MIN_LIFETIME:-1}
PCP_MAX=${ZP_PCP_MAX_LIFETIME:-86400}
RUNDIR=${ZP_RIG_RUNDIR:-/run/zeppelin-nat-rig$sfx}
ENVFILE=${ZP_RIG_ENV:-/run/zeppelin-nat-rig$sfx.env}

# Interface names live inside the namespaces, so they never collide between rigs.
LAN_IF=eth0 ROUTER_LAN_IF=lan0 ROUTER_WAN_IF=wan0 WAN_IF=eth0
LAN_IP=$LAN_SUBNET.2 ROUTER_LAN_IP=$LAN_SUBNET.1
ROUTER_WAN_IP=$WAN_SUBNET.1 WAN_IP=$WAN_SUBNET.2

CONF=$RUNDIR/miniupnpd.conf PIDFILE=$RUNDIR/miniupnpd.pid LOG=$RUNDIR/miniupnpd.log
LEASES=$RUNDIR/leases PROTOFILE=$RUNDIR/protocols

for n in "$NS_LAN" "$NS_ROUTER" "$NS_WAN"; do
    [[ "$n" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "bad namespace name '$n'"
done
[ "$NS_LAN" != "$NS_ROUTER" ] && [ "$NS_LAN" != "$NS_WAN" ] && [ "$NS_ROUTER" != "$NS_WAN" ] \
    || die "the three namespace names must differ"
for p in "$HTTP_PORT" "$PCP_MIN" "$PCP_MAX"; do
    [[ "$p" =~ ^[0-9]{1,5}$ ]] || die "not a number: '$p'"
done
[ "$HTTP_PORT" -ge 1 ] && [ "$HTTP_PORT" -le 65535 ] || die "ZP_UPNP_HTTP_PORT out of range"
[ "$PCP_MIN" -ge 1 ] && [ "$PCP_MIN" -le 120 ] && [ "$PCP_MIN" -lt "$PCP_MAX" ] && [ "$PCP_MAX" -le 86400 ] \
    || die "need 1 <= ZP_PCP_MIN_LIFETIME <= 120 and ZP_PCP_MIN_LIFETIME < ZP_PCP_MAX_LIFETIME <= 86400"
case "$RUNDIR$ENVFILE" in *[!A-Za-z0-9/._-]*) die "ZP_RIG_RUNDIR / ZP_RIG_ENV: use [A-Za-z0-9/._-] only" ;; esac
[[ "$RUNDIR" = /* && "$ENVFILE" = /* ]] || die "ZP_RIG_RUNDIR and ZP_RIG_ENV must be absolute"

# ip2int a.b.c.d -> integer; dies on a malformed address.
ip2int() {
    local IFS=. a b c d
    [[ "$1" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "not an IPv4 address: '$1'"
    read -r a b c d <<<"$1"
    for o in "$a" "$b" "$c" "$d"; do [ "$((10#$o))" -le 255 ] || die "not an IPv4 address: '$1'"; done
    echo $(( (10#$a << 24) | (10#$b << 16) | (10#$c << 8) | 10#$d ))
}
# The reserved list of miniupnpd 2.3.1 (getifaddr.c, addr_is_reserved): a WAN address in any
# of these makes it refuse all mappings ("Port forwarding is impossible", UPnP error 501).
is_reserved() {
    local x r base bits
    x=$(ip2int "$1")
    for r in 0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 \
             192.0.0.0/24 192.0.2.0/24 192.31.196.0/24 192.52.193.0/24 192.88.99.0/24 \
             192.168.0.0/16 192.175.48.0/24 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24 \
             224.0.0.0/4 240.0.0.0/4; do
        base=$(ip2int "${r%/*}"); bits=$((32 - ${r#*/}))
        [ $((x >> bits)) -eq $((base >> bits)) ] && return 0
    done
    return 1
}
ip2int "$LAN_IP" >/dev/null
ip2int "$ROUTER_WAN_IP" >/dev/null
[ "$LAN_SUBNET" != "$WAN_SUBNET" ] || die "ZP_LAN_SUBNET and ZP_WAN_SUBNET must differ"
if is_reserved "$ROUTER_WAN_IP"; then
    die "ZP_WAN_SUBNET=$WAN_SUBNET is in a range miniupnpd treats as private/reserved; it would refuse every mapping. Use a public-looking subnet (default 198.20.N)."
fi

# ---------------------------------------------------------------- preconditions
need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables): run it as root, e.g. sudo $0 $*"
}
need_tools() {
    local missing=() t
    for t in ip iptables-legacy miniupnpd upnpc python3 setsid; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ "${#missing[@]}" = 0 ] || die "missing: ${missing[*]} -- run tools/setup.sh (installs iproute2, iptables, miniupnpd-iptables, miniupnpc)"
    miniupnpd --version 2>&1 | grep -q 'iptables' \
        || die "this miniupnpd is not the iptables build; run tools/setup.sh (miniupnpd-iptables)"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }
inr() { ip netns exec "$NS_ROUTER" "$@"; }
ipt() { ip netns exec "$NS_ROUTER" iptables-legacy -w "$@"; }
# ipt_ensure TABLE CHAIN RULE...: append RULE unless an identical one exists.
ipt_ensure() {
    local t=$1 c=$2; shift 2
    ipt -t "$t" -C "$c" "$@" 2>/dev/null || ipt -t "$t" -A "$c" "$@"
}
ipt_chain() { ipt -t "$1" -nL "$2" >/dev/null 2>&1 || ipt -t "$1" -N "$2"; }

router_pid() {
    # Prints the pid of this rig's miniupnpd if it is running, else nothing.
    local pid
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = miniupnpd ] || return 0
    # It must be the one using our config (pids are reused; other rigs run miniupnpd too).
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-f $CONF " || return 0
    echo "$pid"
}

# ---------------------------------------------------------------- building the rig
veth() { # veth NS_A IF_A NS_B IF_B: a veth pair created directly inside the two namespaces
    local a=$1 ia=$2 b=$3 ib=$4
    if ! ip -n "$a" link show dev "$ia" >/dev/null 2>&1; then
        ip -n "$b" link del dev "$ib" 2>/dev/null || true
        ip link add name "$ia" netns "$a" type veth peer name "$ib" netns "$b"
    fi
    ip -n "$a" link set dev "$ia" up
    ip -n "$b" link set dev "$ib" up
}

sysctl_ns() { ip netns exec "$1" sysctl -q -w "$2" >/dev/null; }

build_net() {
    local n
    for n in "$NS_LAN" "$NS_ROUTER" "$NS_WAN"; do
        ns_exists "$n" || ip netns add "$n"
        # `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: point
        # DNS at the namespace's own loopback, where nothing listens, so lookups (Python's
        # http.server does a reverse lookup on bind) fail at once instead of timing out.
        mkdir -p "/etc/netns/$n"
        printf '# tools/nat-rig.sh: no DNS inside the rig\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n' \
            >"/etc/netns/$n/resolv.conf"
        ip -n "$n" link set dev lo up
        # IPv4-only rig: no IPv6 autoconfiguration noise.
        sysctl_ns "$n" net.ipv6.conf.all.disable_ipv6=1
        sysctl_ns "$n" net.ipv6.conf.default.disable_ipv6=1
    done
    veth "$NS_ROUTER" "$ROUTER_LAN_IF" "$NS_LAN" "$LAN_IF"
    veth "$NS_ROUTER" "$ROUTER_WAN_IF" "$NS_WAN" "$WAN_IF"

    ip -n "$NS_LAN" addr replace "$LAN_IP/24" dev "$LAN_IF"
    ip -n "$NS_ROUTER" addr replace "$ROUTER_LAN_IP/24" dev "$ROUTER_LAN_IF"
    ip -n "$NS_ROUTER" addr replace "$ROUTER_WAN_IP/24" dev "$ROUTER_WAN_IF"
    ip -n "$NS_WAN" addr replace "$WAN_IP/24" dev "$WAN_IF"

    ip -n "$NS_LAN" route replace default via "$ROUTER_LAN_IP" dev "$LAN_IF"
    ip -n "$NS_ROUTER" route replace default via "$WAN_IP" dev "$ROUTER_WAN_IF"
    # zp-wan deliberately gets no default route and does not forward: it only knows its /24.
    sysctl_ns "$NS_WAN" net.ipv4.ip_forward=0
    sysctl_ns "$NS_LAN" net.ipv4.ip_forward=0
    sysctl_ns "$NS_ROUTER" net.ipv4.ip_forward=1

    # Router firewall, like a home router: LAN may go out (masqueraded), WAN may only come in
    # on replies and on what miniupnpd opened (its MINIUPNPD chains).
    ipt_chain nat MINIUPNPD
    ipt_chain nat MINIUPNPD-POSTROUTING
    ipt_chain filter MINIUPNPD
    ipt_chain mangle MINIUPNPD
    ipt_ensure nat PREROUTING -i "$ROUTER_WAN_IF" -j MINIUPNPD
    ipt_ensure nat POSTROUTING -o "$ROUTER_WAN_IF" -j MINIUPNPD-POSTROUTING
    ipt_ensure nat POSTROUTING -o "$ROUTER_WAN_IF" -j MASQUERADE
    ipt_ensure mangle PREROUTING -i "$ROUTER_WAN_IF" -j MINIUPNPD
    ipt_ensure filter FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ipt_ensure filter FORWARD -i "$ROUTER_WAN_IF" ! -o "$ROUTER_WAN_IF" -j MINIUPNPD
    ipt_ensure filter FORWARD -i "$ROUTER_LAN_IF" -o "$ROUTER_WAN_IF" -j ACCEPT
    ipt -t filter -P FORWARD DROP
    ipt_ensure filter INPUT -i "$ROUTER_WAN_IF" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ipt_ensure filter INPUT -i "$ROUTER_WAN_IF" -p icmp -j ACCEPT
    ipt_ensure filter INPUT -i "$ROUTER_WAN_IF" -j DROP

    check_sealed
}

# Proof that nothing can leave: every interface in the rig's namespaces is lo or one of our
# veths, and each veth's peer is in one of our namespaces.
check_sealed() {
    local n ifs want
    for n in "$NS_LAN" "$NS_ROUTER" "$NS_WAN"; do
        ifs=$(ip -n "$n" -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort | tr '\n' ' ')
        case "$n" in
            "$NS_LAN") want="lo $LAN_IF" ;;
            "$NS_ROUTER") want="lo $ROUTER_LAN_IF $ROUTER_WAN_IF" ;;
            *) want="lo $WAN_IF" ;;
        esac
        want=$(tr ' ' '\n' <<<"$want" | sort | tr '\n' ' ')
        [ "$ifs" = "$want" ] \
            || die "namespace $n has interfaces '$ifs', expected '$want' (refusing: it might reach outside the rig)"
        # Each veth's peer must sit in one of the rig's namespaces (link-netns shown by ip -d).
        local peers
        peers=$(ip -n "$n" -o -d link show type veth | grep -o 'link-netns[id]* [^ ]*' | awk '{print $2}' | sort -u | tr '\n' ' ')
        for p in $peers; do
            [ "$p" = "$NS_LAN" ] || [ "$p" = "$NS_ROUTER" ] || [ "$p" = "$NS_WAN" ] \
                || die "a veth in $n leads to namespace '$p', not one of the rig's (refusing)"
        done
    done
    ip -n "$NS_WAN" route show default | grep -q . && die "$NS_WAN has a default route; it must not"
    return 0
}

# ---------------------------------------------------------------- the router (miniupnpd)
parse_proto_flags() { # sets want_upnp want_natpmp want_pcp keep_state from flags
    want_upnp=yes want_natpmp=yes want_pcp=yes keep_state=no
    local allow_keep=$1; shift
    for a in "$@"; do
        case "$a" in
            --no-upnp) want_upnp=no ;;
            --no-natpmp) want_natpmp=no ;;
            --no-pcp) want_pcp=no ;;
            --keep-state) [ "$allow_keep" = yes ] || die "--keep-state only goes with restart-router"; keep_state=yes ;;
            *) die "unknown option '$a'" ;;
        esac
    done
    # miniupnpd serves NAT-PMP and PCP on the same socket behind one switch (enable_natpmp);
    # --no-pcp is done by dropping PCP (version 2) packets in the router's INPUT chain, so a
    # PCP client sees no answer while NAT-PMP (version 0) still works.
    if [ "$want_upnp$want_natpmp$want_pcp" = nonono ]; then
        die "all protocols disabled: use stop-router for a router without any of them"
    fi
}

protocols_string() {
    local s=()
    [ "$want_upnp" = yes ] && s+=(upnp)
    [ "$want_natpmp" = yes ] && s+=(natpmp)
    [ "$want_pcp" = yes ] && s+=(pcp)
    echo "${s[*]}"
}

write_conf() {
    local natpmp=no
    [ "$want_natpmp" = yes ] || [ "$want_pcp" = yes ] && natpmp=yes
    mkdir -p "$RUNDIR"
    cat >"$CONF" <<EOF
# Generated by tools/nat-rig.sh for rig '${ZP_RIG:-default}' ($(protocols_string)). Do not edit.
ext_ifname=$ROUTER_WAN_IF
listening_ip=$ROUTER_LAN_IF
ipv6_disable=yes
http_port=$HTTP_PORT
enable_upnp=$want_upnp
enable_natpmp=$natpmp
min_lifetime=$PCP_MIN
max_lifetime=$PCP_MAX
secure_mode=yes
system_uptime=no
notify_interval=30
clean_ruleset_interval=600
lease_file=$LEASES
uuid=7a6f7070-656c-696e-2d72-6967$(printf '%08x' "$net")
friendly_name=Zeppelin NAT rig ${ZP_RIG:-default}
model_name=miniupnpd
allow 1024-65535 $LAN_SUBNET.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
}

flush_router_state() {
    ipt -t nat -F MINIUPNPD
    ipt -t nat -F MINIUPNPD-POSTROUTING
    ipt -t filter -F MINIUPNPD
    ipt -t mangle -F MINIUPNPD
    rm -f "$LEASES"
    # Connections already set up through a mapping live on in conntrack; flush them like a
    # reboot would, when the conntrack tool is there.
    if command -v conntrack >/dev/null 2>&1; then inr conntrack -F >/dev/null 2>&1 || true; fi
}

stop_router() {
    local pid
    pid=$(router_pid)
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

start_router() {
    local pid ok
    write_conf
    [ "$keep_state" = yes ] || flush_router_state
    # PCP switch (see parse_proto_flags).
    ipt -t filter -D INPUT -i "$ROUTER_LAN_IF" -p udp --dport 5351 -m u32 --u32 "0>>22&0x3C@5&0xFF=2" -j DROP 2>/dev/null || true
    if [ "$want_pcp" = no ]; then
        ipt -t filter -I INPUT -i "$ROUTER_LAN_IF" -p udp --dport 5351 -m u32 --u32 "0>>22&0x3C@5&0xFF=2" -j DROP
    fi
    [ "$want_natpmp" = yes ] || [ "$want_pcp" = no ] || \
        say "note: --no-natpmp with PCP on: miniupnpd answers both on UDP 5351; NAT-PMP (version 0) is dropped by the router's firewall"
    ipt -t filter -D INPUT -i "$ROUTER_LAN_IF" -p udp --dport 5351 -m u32 --u32 "0>>22&0x3C@5&0xFF=0" -j DROP 2>/dev/null || true
    if [ "$want_natpmp" = no ] && [ "$want_pcp" = yes ]; then
        ipt -t filter -I INPUT -i "$ROUTER_LAN_IF" -p udp --dport 5351 -m u32 --u32 "0>>22&0x3C@5&0xFF=0" -j DROP
    fi

    : >"$LOG"
    # -d: stay in the foreground (logs to stderr, which goes to $LOG); setsid: own session,
    # so the caller's terminal or test harness signals do not reach it. setsid execs without
    # forking here (we are not a process-group leader), so $! is miniupnpd's pid.
    setsid ip netns exec "$NS_ROUTER" miniupnpd -f "$CONF" -P "$PIDFILE" -d </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
    # (miniupnpd writes $PIDFILE itself and refuses to start if it names a live process.)
    protocols_string >"$PROTOFILE"
    ok=no
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        if router_ready; then ok=yes; break; fi
        sleep 0.05
    done
    if [ "$ok" != yes ]; then
        tail -n 20 "$LOG" >&2 || true
        kill -TERM "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        die "miniupnpd did not come up (log: $LOG)"
    fi
    if grep -q 'Port forwarding is impossible\|Reserved / private IP' "$LOG"; then
        tail -n 5 "$LOG" >&2
        kill -TERM "$pid" 2>/dev/null || true
        die "miniupnpd considers the WAN address private; mappings would fail"
    fi
    echo "$pid" >"$PIDFILE"   # miniupnpd rewrote it with the same pid; keep ours authoritative
}

router_ready() {
    local s
    # Its own log says it listens (so a stray listener on the port cannot fool us) ...
    if [ "$want_upnp" = yes ]; then
        grep -q "HTTP listening on port $HTTP_PORT" "$LOG" || return 1
    fi
    if [ "$want_natpmp" = yes ] || [ "$want_pcp" = yes ]; then
        grep -q "Listening for NAT-PMP/PCP traffic on port 5351" "$LOG" || return 1
    fi
    # ... and the sockets are there.
    s=$(inr ss -Hlntu 2>/dev/null) || return 1
    if [ "$want_upnp" = yes ]; then
        # miniupnpd binds its HTTP and SSDP sockets to the LAN device (0.0.0.0%lan0).
        grep -Eq "^tcp +LISTEN .*:$HTTP_PORT " <<<"$s" || return 1
        grep -Eq "^udp .*:1900 " <<<"$s" || return 1
    fi
    if [ "$want_natpmp" = yes ] || [ "$want_pcp" = yes ]; then
        grep -Eq "^udp .*$ROUTER_LAN_IP:5351 " <<<"$s" || return 1
    fi
    return 0
}

write_env() {
    local pid protos tmp
    pid=$(router_pid)
    protos=$( [ -n "$pid" ] && cat "$PROTOFILE" 2>/dev/null || true)
    tmp=$(mktemp "$ENVFILE.XXXXXX")
    cat >"$tmp" <<EOF
# Zeppelin NAT rig '${ZP_RIG:-default}', written by tools/nat-rig.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ)
ZP_RIG='$ZP_RIG'
ZP_RIG_NET=$net
ZP_NS_LAN='$NS_LAN'
ZP_NS_ROUTER='$NS_ROUTER'
ZP_NS_WAN='$NS_WAN'
ZP_LAN_IF=$LAN_IF
ZP_LAN_IP=$LAN_IP
ZP_LAN_CIDR=$LAN_SUBNET.0/24
ZP_ROUTER_LAN_IF=$ROUTER_LAN_IF
ZP_ROUTER_LAN_IP=$ROUTER_LAN_IP
ZP_ROUTER_WAN_IF=$ROUTER_WAN_IF
ZP_ROUTER_WAN_IP=$ROUTER_WAN_IP
ZP_EXTERNAL_IP=$ROUTER_WAN_IP
ZP_WAN_IF=$WAN_IF
ZP_WAN_IP=$WAN_IP
ZP_WAN_CIDR=$WAN_SUBNET.0/24
ZP_ROUTER_PID=${pid:-}
ZP_ROUTER_PROTOCOLS='${protos:-}'
ZP_ROUTER_CONF=$CONF
ZP_ROUTER_LOG=$LOG
ZP_ROUTER_LEASES=$LEASES
ZP_UPNP_HTTP_PORT=$HTTP_PORT
ZP_UPNP_ROOTDESC_URL=http://$ROUTER_LAN_IP:$HTTP_PORT/rootDesc.xml
ZP_NATPMP_ADDR=$ROUTER_LAN_IP:5351
ZP_RIG_ENV=$ENVFILE
EOF
    chmod 644 "$tmp"
    mv -f "$tmp" "$ENVFILE"
}

# ---------------------------------------------------------------- commands
cmd_up() {
    parse_proto_flags no "$@"
    local t0 pid want
    t0=$(date +%s%N)
    build_net
    pid=$(router_pid)
    want=$(protocols_string)
    if [ -n "$pid" ] && [ "$(cat "$PROTOFILE" 2>/dev/null)" = "$want" ]; then
        :   # already running as asked; keep its state
    else
        [ -n "$pid" ] && say "router protocols change to '$want': restarting it (mappings are lost)"
        stop_router
        start_router
    fi
    write_env
    say "up in $(( ($(date +%s%N) - t0) / 1000000 )) ms: $NS_LAN $LAN_IP -> $NS_ROUTER (external $ROUTER_WAN_IP, $want) -> $NS_WAN $WAN_IP; facts in $ENVFILE"
}

cmd_restart_router() {
    parse_proto_flags yes "$@"
    ns_exists "$NS_ROUTER" || die "no rig '${ZP_RIG:-default}' ($NS_ROUTER missing): run '$prog up' first"
    stop_router
    start_router
    write_env
    say "router restarted ($(protocols_string); state $( [ "$keep_state" = yes ] && echo kept || echo lost)), pid $(router_pid)"
}

cmd_stop_router() {
    [ "$#" = 0 ] || die "stop-router takes no options"
    ns_exists "$NS_ROUTER" || die "no rig '${ZP_RIG:-default}' ($NS_ROUTER missing)"
    stop_router
    flush_router_state
    rm -f "$PROTOFILE"
    write_env
    say "router stopped: no UPnP, NAT-PMP or PCP (NAT and firewall still on)"
}

cmd_down() {
    [ "$#" = 0 ] || die "down takes no options"
    local n pids
    stop_router
    for n in "$NS_LAN" "$NS_ROUTER" "$NS_WAN"; do
        ns_exists "$n" || continue
        # Processes tests left running inside the rig keep a deleted namespace alive: end them.
        pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
        if [ -n "${pids// /}" ]; then
            say "ending processes left in $n: $pids"
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            for _ in $(seq 30); do [ -z "$(ip netns pids "$n" 2>/dev/null)" ] && break; sleep 0.1; done
            pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
            # shellcheck disable=SC2086
            [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null || true
        fi
        ip netns del "$n"
    done
    for n in "$NS_LAN" "$NS_ROUTER" "$NS_WAN"; do
        rm -f "/etc/netns/$n/resolv.conf"
        rmdir "/etc/netns/$n" 2>/dev/null || true
    done
    rmdir /etc/netns 2>/dev/null || true
    rm -rf "$RUNDIR"
    rm -f "$ENVFILE"
    say "rig '${ZP_RIG:-default}' removed"
}

cmd_status() {
    [ "$#" = 0 ] || die "status takes no options"
    local n have=0 pid
    echo "rig '${ZP_RIG:-default}' (facts: $ENVFILE$( [ -f "$ENVFILE" ] || echo ', absent'))"
    for n in "$NS_LAN" "$NS_ROUTER" "$NS_WAN"; do
        if ns_exists "$n"; then
            have=$((have + 1))
            echo "  netns $n:"
            ip -n "$n" -br addr show | sed 's/^/    /'
            ip -n "$n" route show | sed 's/^/    route /'
        else
            echo "  netns $n: absent"
        fi
    done
    pid=$(router_pid)
    if [ -n "$pid" ]; then
        echo "  miniupnpd: pid $pid, protocols: $(cat "$PROTOFILE" 2>/dev/null), conf $CONF, log $LOG"
    else
        echo "  miniupnpd: not running"
    fi
    if ns_exists "$NS_ROUTER"; then
        echo "  port mappings (nat MINIUPNPD):"
        ipt -t nat -S MINIUPNPD 2>/dev/null | grep -- '^-A' | sed 's/^/    /' || echo "    (none)"
        if [ -s "$LEASES" ]; then echo "  lease file:"; sed 's/^/    /' "$LEASES"; fi
    fi
    [ "$have" = 3 ]
}

cmd_env() {
    [ -f "$ENVFILE" ] || die "no rig '${ZP_RIG:-default}' ($ENVFILE missing): run '$prog up'"
    cat "$ENVFILE"
}

[ "$#" -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in
    -h|--help|help) usage ;;
    up|down|status|restart-router|stop-router|env) ;;
    *) say "unknown command '$cmd'"; usage ;;
esac
need_root "$cmd"
need_tools
# One rig operation at a time (per rig); concurrent up/down of the same rig would race.
mkdir -p /run/lock
exec 9>"/run/lock/zeppelin-nat-rig$sfx.lock"
flock -w 60 9 || die "another nat-rig operation on rig '${ZP_RIG:-default}' is still running"
case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    restart-router) cmd_restart_router "$@" ;;
    stop-router) cmd_stop_router "$@" ;;
    env) cmd_env "$@" ;;
esac
