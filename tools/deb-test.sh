#!/usr/bin/env bash
# tools/deb-test.sh - tests of the Debian packages made by tools/package.sh (target/debian/).
#
# Usage: tools/deb-test.sh inspect|dpkg|systemd|all
#   inspect  all three .debs: dpkg-deb --info/--contents (Architecture field, files, modes),
#            the binary's type (`file`), lintian; systemd-analyze security (offline)
#   dpkg     amd64 in a clean Debian 12 container (tools/deb-root.sh): install an older build,
#            upgrade to this one (a modified conffile kept with --force-confold, state kept),
#            remove (conffile, state and user kept), purge (all gone)
#   systemd  amd64 in a Debian 12 container with systemd as PID 1, against a devnet
#            (`zeppelin dev` on the host: anvil + the WorkerDispatcher deployed): systemd-analyze
#            verify of the installed unit, start reaches
#            active through READY=1, STATUS in `systemctl status`, a clean stop, a hung main loop
#            (SIGSTOP) killed by the watchdog and restarted
#
# Every container is named zeppelin-debtest-<pid>-* and labelled zeppelin-debtest, and removed
# at exit. Needs root (the Docker engine) and tools/env.sh sourced (anvil) for `systemd`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
die() { printf 'deb-test: FAILED: %s\n' "$*" >&2; exit 1; }
log() { printf 'deb-test: %s\n' "$*"; }
pass() { printf 'deb-test:   ok  %s\n' "$*"; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
deb_of() { # the package of this version for an architecture
    local deb="$target_dir/debian/zeppelin_${version}-1_$1.deb"
    [ -f "$deb" ] || die "no $deb (run: bash tools/package.sh $1)"
    echo "$deb"
}

containers=()
tmp=$(mktemp -d /tmp/zeppelin-debtest.XXXXXX)
dev_pid=
cleanup() {
    for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    if [ -n "$dev_pid" ]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------ inspect
inspect() {
    local arch deb expect info kind run
    for arch in amd64 arm64 armhf; do
        deb=$(deb_of "$arch")
        case "$arch" in
            amd64) expect="x86-64" ;;
            arm64) expect="ARM aarch64" ;;
            armhf) expect="ARM, EABI5" ;;
        esac
        info=$(dpkg-deb --info "$deb")
        grep -qx " Architecture: $arch" <<<"$info" || die "$deb: Architecture is not $arch"
        grep -q "^ Depends: .*adduser.*docker.io | docker-ce | docker-engine" <<<"$info" ||
            die "$deb: Depends lacks adduser or the Docker engine: $(grep Depends <<<"$info")"
        dpkg-deb --contents "$deb" >"$tmp/contents"
        for entry in "^-rwxr-xr-x 0/0 .* ./usr/bin/zeppelin$" \
            "^-rw-r--r-- 0/0 .* ./etc/zeppelin/zeppelin.toml$" \
            " ./lib/systemd/system/zeppelin.service$\| ./usr/lib/systemd/system/zeppelin.service$" \
            " ./usr/share/man/man1/zeppelin.1.gz$" " ./usr/share/man/man1/zeppelin-daemon.1.gz$" \
            " ./usr/share/bash-completion/completions/zeppelin$" \
            " ./usr/share/zsh/vendor-completions/_zeppelin$" \
            " ./usr/share/fish/vendor_completions.d/zeppelin.fish$" \
            " ./usr/share/doc/zeppelin/copyright$"; do
            grep -q -- "$entry" "$tmp/contents" || die "$deb: no entry matching '$entry'"
        done
        rm -rf "$tmp/ctrl" && dpkg-deb -e "$deb" "$tmp/ctrl"
        grep -qx /etc/zeppelin/zeppelin.toml "$tmp/ctrl/conffiles" ||
            die "$deb: /etc/zeppelin/zeppelin.toml is not a conffile"
        rm -rf "$tmp/x" && mkdir "$tmp/x" && dpkg-deb -x "$deb" "$tmp/x"
        kind=$(file -b "$tmp/x/usr/bin/zeppelin")
        [[ $kind == *"$expect"* ]] || die "$deb: usr/bin/zeppelin is '$kind', expected '$expect'"
        # The packaged binary runs (under qemu-user for ARM, as tools/cross-build.sh does).
        case "$arch" in
            amd64) run=("$tmp/x/usr/bin/zeppelin") ;;
            arm64) run=(qemu-aarch64-static -L /usr/aarch64-linux-gnu "$tmp/x/usr/bin/zeppelin") ;;
            armhf) run=(qemu-arm-static -L /usr/arm-linux-gnueabihf "$tmp/x/usr/bin/zeppelin") ;;
        esac
        "${run[@]}" --version >"$tmp/version" 2>&1 || { cat "$tmp/version"; die "$deb: zeppelin --version does not run"; }
        pass "$arch: $(stat -c %s "$deb") bytes, Architecture $arch, $(cut -d, -f1-2 <<<"$kind"), runs: $(cat "$tmp/version")"
        pass "$arch: conffile, unit, man pages, completions, copyright"
        lintian --fail-on error,warning --tag-display-limit 0 "$deb" || die "lintian on $deb"
        pass "$arch: lintian clean (errors and warnings fail)"
    done
    # The unit's sandbox, rated offline from the amd64 package's own files (`verify` needs a
    # whole system: it runs in the systemd test).
    rm -rf "$tmp/x" && mkdir "$tmp/x" && dpkg-deb -x "$(deb_of amd64)" "$tmp/x"
    local score
    systemd-analyze security --offline=yes --root="$tmp/x" zeppelin.service >"$tmp/security" 2>&1 ||
        { tail -5 "$tmp/security"; die "systemd-analyze security"; }
    score=$(sed -n 's/.*Overall exposure level for zeppelin.service: \([0-9.]*\).*/\1/p' "$tmp/security")
    [ -n "$score" ] || { tail -5 "$tmp/security"; die "no exposure score"; }
    awk -v s="$score" 'BEGIN { exit !(s < 3.0) }' || die "exposure $score is not below 3.0"
    pass "systemd-analyze security --offline=yes: exposure $score (below 3.0)"
}

# ------------------------------------------------------------------------------------ dpkg
# The previous build: this package with a lower version and a different default config, so
# that the upgrade meets a conffile both the administrator and the package changed.
make_previous() {
    local new=$1 out=$2
    rm -rf "$tmp/prev" && dpkg-deb -R "$new" "$tmp/prev"
    sed -i "s/^Version: .*/Version: 0.0.1-1/" "$tmp/prev/DEBIAN/control"
    echo "# (previous build)" >>"$tmp/prev/etc/zeppelin/zeppelin.toml"
    (cd "$tmp/prev" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
    dpkg-deb --root-owner-group -Zxz -b "$tmp/prev" "$out" >/dev/null
}

dpkg_test() {
    local new image name
    new=$(deb_of amd64)
    make_previous "$new" "$tmp/zeppelin_0.0.1-1_amd64.deb"
    cp "$new" "$tmp/new.deb"
    image=$(bash tools/deb-root.sh)
    name="zeppelin-debtest-$$-dpkg"
    containers+=("$name")
    cat >"$tmp/dpkg-checks.sh" <<'SCRIPT'
set -eu
fail() { echo "FAILED: $*" >&2; exit 1; }
ok() { echo "  ok  $*"; }
mode() { stat -c '%a %U:%G' "$1"; }
status() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' zeppelin 2>/dev/null || echo "absent"; }
export DEBIAN_FRONTEND=noninteractive

dpkg -i /debs/zeppelin_0.0.1-1_amd64.deb >/tmp/out 2>&1 || { cat /tmp/out; fail "installing the previous build"; }
[ "$(status)" = "ii 0.0.1-1" ] || fail "status after install: $(status)"
getent passwd zeppelin | grep -q ':/var/lib/zeppelin:/usr/sbin/nologin$' || fail "user: $(getent passwd zeppelin)"
uid=$(id -u zeppelin); [ "$uid" -lt 1000 ] || fail "zeppelin is not a system user (uid $uid)"
getent group zeppelin >/dev/null || fail "no group zeppelin"
id -nG zeppelin | tr ' ' '\n' | grep -qx docker || fail "zeppelin is not in group docker: $(id -nG zeppelin)"
[ "$(mode /var/lib/zeppelin)" = "700 zeppelin:zeppelin" ] || fail "/var/lib/zeppelin: $(mode /var/lib/zeppelin)"
[ "$(mode /usr/bin/zeppelin)" = "755 root:root" ] || fail "/usr/bin/zeppelin: $(mode /usr/bin/zeppelin)"
[ "$(mode /etc/zeppelin/zeppelin.toml)" = "644 root:root" ] || fail "conffile: $(mode /etc/zeppelin/zeppelin.toml)"
dpkg-query -W -f='${Conffiles}\n' zeppelin | grep -q '^ /etc/zeppelin/zeppelin.toml ' || fail "not a conffile"
unit=$(dpkg -L zeppelin | grep '/systemd/system/zeppelin.service$') || fail "no unit installed"
[ ! -e /etc/systemd/system/multi-user.target.wants/zeppelin.service ] || fail "enabled on install"
zeppelin --version | grep -q '^zeppelin ' || fail "zeppelin --version"
man_ok=$(zcat /usr/share/man/man1/zeppelin-daemon.1.gz | grep -c '^\.TH') && [ "$man_ok" = 1 ] || fail "man page"
# The installed default config is valid up to what only the operator knows (the chain).
runuser -u zeppelin -- zeppelin daemon >/tmp/out 2>&1 && fail "the daemon started with no chain configured"
grep -q 'zeppelin: error:' /tmp/out || { cat /tmp/out; fail "no error message"; }
ok "install 0.0.1-1: user and group zeppelin (system, nologin, in docker), /var/lib/zeppelin 0700, binary, conffile, unit $unit (not enabled), man page"
echo "      the unconfigured daemon refuses to start: $(grep "zeppelin: error:" /tmp/out)"

# The administrator edits the config; the daemon has state.
echo '# edited by the administrator' >>/etc/zeppelin/zeppelin.toml
runuser -u zeppelin -- sh -c 'umask 077; echo state >/var/lib/zeppelin/marker'
dpkg -i --force-confold /debs/new.deb >/tmp/out 2>&1 </dev/null || { cat /tmp/out; fail "upgrading"; }
[ "$(status)" = "ii VERSION-1" ] || fail "status after upgrade: $(status)"
tail -n1 /etc/zeppelin/zeppelin.toml | grep -qx '# edited by the administrator' || fail "the modified conffile was replaced"
[ -f /etc/zeppelin/zeppelin.toml.dpkg-dist ] || fail "the new default config was not put aside as .dpkg-dist"
! grep -q 'previous build' /etc/zeppelin/zeppelin.toml.dpkg-dist || fail ".dpkg-dist is the old default"
[ "$(cat /var/lib/zeppelin/marker)" = state ] || fail "state lost on upgrade"
[ "$(mode /var/lib/zeppelin)" = "700 zeppelin:zeppelin" ] || fail "/var/lib/zeppelin after upgrade: $(mode /var/lib/zeppelin)"
[ "$(getent passwd zeppelin | cut -d: -f3)" = "$uid" ] || fail "the user changed on upgrade"
ok "upgrade to VERSION-1 (--force-confold): modified conffile kept, new one as .dpkg-dist, state and user kept"
rm /etc/zeppelin/zeppelin.toml.dpkg-dist

dpkg -r zeppelin >/tmp/out 2>&1 || { cat /tmp/out; fail "remove"; }
[ "$(status)" = "rc VERSION-1" ] || fail "status after remove: $(status)"
[ ! -e /usr/bin/zeppelin ] || fail "binary left after remove"
[ -f /etc/zeppelin/zeppelin.toml ] || fail "conffile gone after remove"
[ "$(cat /var/lib/zeppelin/marker)" = state ] || fail "state lost on remove"
getent passwd zeppelin >/dev/null || fail "user gone after remove"
ok "remove: binary gone; conffile, state and user kept"

dpkg -P zeppelin >/tmp/out 2>&1 || { cat /tmp/out; fail "purge"; }
[ "$(status)" = absent ] || fail "status after purge: $(status)"
for path in /etc/zeppelin /var/lib/zeppelin; do [ ! -e "$path" ] || fail "$path left after purge"; done
! getent passwd zeppelin >/dev/null || fail "user left after purge"
! getent group zeppelin >/dev/null || fail "group left after purge"
getent group docker >/dev/null || fail "purge removed the docker group"
ok "purge: /etc/zeppelin, /var/lib/zeppelin, user and group gone"

dpkg -i /debs/new.deb >/tmp/out 2>&1 || { cat /tmp/out; fail "fresh install"; }
[ "$(mode /var/lib/zeppelin)" = "700 zeppelin:zeppelin" ] && [ "$(status)" = "ii VERSION-1" ] || fail "fresh install"
dpkg -P zeppelin >/dev/null 2>&1 || fail "second purge"
ok "fresh install of VERSION-1 after purge, purge again"
SCRIPT
    sed -i "s/VERSION/$version/g" "$tmp/dpkg-checks.sh"
    docker run --rm --name "$name" --label zeppelin-debtest=1 --network none -v "$tmp:/debs:ro" "$image" \
        bash /debs/dpkg-checks.sh || die "dpkg test in $image"
}

# ------------------------------------------------------------------------------------ systemd
in_ctr() { docker exec "$ctr" "$@"; }
prop() { in_ctr systemctl show -p "$1" --value zeppelin; }
wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...: polls every 0.5 s
    local limit=$1 what=$2 start=$SECONDS
    shift 2
    until "$@"; do
        [ $((SECONDS - start)) -lt "$limit" ] || die "timed out after $limit s waiting for: $what"
        sleep 0.5
    done
}

systemd_test() {
    local new image port http_port deployment start
    new=$(deb_of amd64)
    cp "$new" "$tmp/new.deb"
    make_previous "$new" "$tmp/previous.deb"
    image=$(bash tools/deb-root.sh)
    [ -x "$target_dir/release/zeppelin" ] || die "no host release build (cargo build --release)"
    command -v "${ZEPPELIN_ANVIL:-anvil}" >/dev/null || die "anvil not found (source tools/env.sh)"

    # The devnet: anvil with the WorkerDispatcher deployed, run by the host's build.
    "$target_dir/release/zeppelin" dev --rpc-port 0 --workers 0 --dir "$tmp/dev" >"$tmp/dev.log" 2>&1 &
    dev_pid=$!
    wait_until 60 "the devnet's deployment file" sh -c "ls '$tmp'/dev/deployments/*.json >/dev/null 2>&1 && grep -q running '$tmp/dev.log'"
    deployment=$(ls "$tmp"/dev/deployments/*.json | head -n1)
    port=$(sed -n 's|.*anvil at http://[^ ]*:\([0-9]*\) .*|\1|p' "$tmp/dev.log" | head -n1)
    [ -n "$port" ] || { cat "$tmp/dev.log"; die "no anvil port in the devnet's output"; }
    pass "devnet: anvil on 127.0.0.1:$port, $(basename "$deployment")"

    # Debian 12 with systemd as PID 1 (the network is the host's, to reach anvil on loopback).
    ctr="zeppelin-debtest-$$-systemd"
    containers+=("$ctr")
    docker run -d --name "$ctr" --label zeppelin-debtest=1 --network host \
        --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v "$tmp:/debs:ro" \
        "$image" /sbin/init >/dev/null
    local state
    booted() {
        state=$(docker exec "$ctr" systemctl is-system-running 2>/dev/null) || true
        case "$state" in running | degraded | maintenance | stopping) return 0 ;; *) return 1 ;; esac
    }
    wait_until 60 "systemd to finish booting" booted
    [ "$state" = running ] || { in_ctr systemctl --failed --no-pager || true; die "system state '$state', not running"; }
    pass "systemd $(in_ctr systemctl --version | head -n1 | cut -d' ' -f2) is PID 1: $state"

    # The previous build first: the upgrade at the end must restart the running service.
    in_ctr dpkg -i /debs/previous.deb >"$tmp/out" 2>&1 || { cat "$tmp/out"; die "dpkg -i under systemd"; }
    [ "$(prop UnitFileState)" = disabled ] && [ "$(prop ActiveState)" = inactive ] ||
        die "after install: $(prop UnitFileState), $(prop ActiveState) (expected disabled, inactive)"
    pass "installed: the unit is known, disabled and not started until configured"
    in_ctr systemd-analyze verify --man=no zeppelin.service >"$tmp/verify" 2>&1 || { cat "$tmp/verify"; die "systemd-analyze verify"; }
    [ ! -s "$tmp/verify" ] || { cat "$tmp/verify"; die "systemd-analyze verify printed warnings"; }
    pass "systemd-analyze verify zeppelin.service (installed, systemd 252): clean"

    http_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    docker cp "$deployment" "$ctr:/etc/zeppelin/deployment.json"
    docker exec -i "$ctr" sh -c "chmod 644 /etc/zeppelin/deployment.json && cat >/etc/zeppelin/zeppelin.toml" <<TOML
[chain]
rpc_url = "http://127.0.0.1:$port"
deployment_file = "/etc/zeppelin/deployment.json"
poll_interval = "1s"
confirmations = 1

[worker]
price_per_second = "1 gwei"

[api]
http_listen = "127.0.0.1:$http_port"
TOML

    # Start: systemctl returns once READY=1 arrived (Type=notify).
    start=$SECONDS
    timeout 90 docker exec "$ctr" systemctl start zeppelin ||
        { in_ctr journalctl -u zeppelin --no-pager -n 30 || true; die "systemctl start zeppelin"; }
    [ "$(prop ActiveState)/$(prop SubState)" = active/running ] || die "not active after start: $(prop ActiveState)"
    pass "systemctl start zeppelin: active (running) after READY=1, $((SECONDS - start)) s"

    # The worker funds itself from a dev account here, so that it registers.
    local address
    address=$(in_ctr zeppelin status --json | sed -n 's/.*"address": "\(0x[0-9a-fA-F]*\)".*/\1/p' | head -n1)
    [ -n "$address" ] || die "no address from zeppelin status"
    cast send --rpc-url "http://127.0.0.1:$port" --value 100ether \
        --private-key 0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d "$address" >/dev/null ||
        die "funding $address"
    wait_until 60 "STATUS=registered" sh -c "docker exec '$ctr' systemctl show -p StatusText --value zeppelin | grep -q '^registered, 0 agreements'"
    in_ctr systemctl status zeppelin --no-pager >"$tmp/status" || true
    grep -q '^ *Status: "registered, 0 agreements"' "$tmp/status" || { cat "$tmp/status"; die "no STATUS line in systemctl status"; }
    pass "systemctl status shows the daemon's line: $(grep '^ *Status:' "$tmp/status" | sed 's/^ *//')"
    in_ctr sh -c 'stat -c "%a %U" /var/lib/zeppelin/keystore.json' | grep -qx '600 zeppelin' || die "keystore mode/owner"
    in_ctr stat -c '%a %U:%G' /run/zeppelin /run/zeppelin/control.sock >"$tmp/modes"
    [ "$(tr '\n' ' ' <"$tmp/modes")" = "750 zeppelin:zeppelin 660 zeppelin:zeppelin " ] ||
        die "runtime directory and control socket: $(tr '\n' ' ' <"$tmp/modes")"
    pass "worker $address registered; keystore.json 0600 zeppelin; /run/zeppelin 0750, control.sock 0660 group zeppelin"
    in_ctr systemd-analyze security zeppelin.service >"$tmp/security" 2>&1 || true
    pass "systemd-analyze security (online, in the container): $(grep -o 'Overall exposure level.*' "$tmp/security")"

    # Stop: SIGTERM, STOPPING=1, exit 0 well within TimeoutStopSec.
    start=$SECONDS
    in_ctr systemctl stop zeppelin || die "systemctl stop"
    [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] ||
        die "stop: Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
    in_ctr journalctl -u zeppelin --no-pager >"$tmp/journal"
    grep -q 'zeppelin.service: Deactivated successfully' "$tmp/journal" || { tail "$tmp/journal"; die "no clean deactivation"; }
    ! grep -qi 'SIGKILL\|killing\|timed out\|status=[1-9]' "$tmp/journal" || { tail "$tmp/journal"; die "the stop was not clean"; }
    pass "systemctl stop: exited 0 (Result=success, no SIGKILL), $((SECONDS - start)) s"

    # Watchdog: a frozen main loop stops the pings; systemd aborts and restarts the daemon.
    in_ctr systemctl start zeppelin || die "second start"
    local pid restarts
    pid=$(prop MainPID)
    restarts=$(prop NRestarts)
    in_ctr kill -STOP "$pid"
    start=$SECONDS
    wait_until 120 "a restart after the watchdog timeout" sh -c \
        "[ \"\$(docker exec '$ctr' systemctl show -p NRestarts --value zeppelin)\" = $((restarts + 1)) ] && [ \"\$(docker exec '$ctr' systemctl show -p ActiveState --value zeppelin)\" = active ]"
    [ "$(prop MainPID)" != "$pid" ] || die "same main PID after the restart"
    in_ctr journalctl -u zeppelin --no-pager >"$tmp/journal"
    grep -q 'Watchdog timeout' "$tmp/journal" || { tail -20 "$tmp/journal"; die "the journal does not say watchdog timeout"; }
    pass "SIGSTOP of pid $pid: watchdog timeout, NRestarts $restarts -> $(prop NRestarts), active again as pid $(prop MainPID), $((SECONDS - start)) s"
    grep 'Watchdog timeout\|Scheduled restart' "$tmp/journal" | sed 's/^/            /'

    # An upgrade restarts the running service, with the operator's config; remove stops it.
    pid=$(prop MainPID)
    in_ctr dpkg -i --force-confold /debs/new.deb >"$tmp/out" 2>&1 </dev/null || { cat "$tmp/out"; die "upgrade under systemd"; }
    [ "$(in_ctr dpkg-query -W -f='${Version}' zeppelin)" = "$version-1" ] || die "not upgraded"
    in_ctr grep -q "^rpc_url = \"http://127.0.0.1:$port\"" /etc/zeppelin/zeppelin.toml || die "upgrade replaced the config"
    [ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" != "$pid" ] ||
        die "upgrade did not restart the service ($(prop ActiveState), pid $(prop MainPID))"
    wait_until 30 "STATUS=registered after the upgrade" sh -c "docker exec '$ctr' systemctl show -p StatusText --value zeppelin | grep -q '^registered'"
    pass "upgrade 0.0.1-1 -> $version-1: config kept, service restarted (pid $pid -> $(prop MainPID)), $(prop StatusText)"
    in_ctr dpkg -r zeppelin >"$tmp/out" 2>&1 || { cat "$tmp/out"; die "dpkg -r under systemd"; }
    [ "$(in_ctr systemctl is-active zeppelin || true)" = inactive ] || die "remove left the service running"
    ! in_ctr pgrep -x zeppelin >/dev/null || die "a zeppelin process survived remove"
    pass "dpkg -r: service stopped"
}

case "${1:-all}" in
    inspect) inspect ;;
    dpkg) dpkg_test ;;
    systemd) systemd_test ;;
    all) inspect && dpkg_test && systemd_test ;;
    *) die "usage: $0 inspect|dpkg|systemd|all" ;;
esac
log "passed: ${1:-all}"
