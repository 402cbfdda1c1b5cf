#!/usr/bin/env bash
# One set-up path for everything Zeppelin's development and tests need on Debian 12:
#   - Debian packages: the Docker engine (docker.io), Node.js and npm, the test router
#     (miniupnpd, miniupnpc, iproute2, iptables), busybox-static (test images) and small tools;
#   - the contract toolchain from the npm registry, pinned by tools/package-lock.json:
#     anvil, forge, cast (Foundry) and solc-js behind the tools/solc wrapper;
#   - the ARM cross toolchains (tools/setup-cross.sh): Debian's rustc-web with arm64/armhf
#     standard libraries in a private sysroot, the Debian cross linkers, qemu-user-static;
#   - a running Docker engine (dockerd started in the background where systemd is not PID 1).
#
# Idempotent, and quick when everything is already there (no network is touched then).
# Root is needed only to install packages and start dockerd; a non-root user is told the one
# sudo command to run.
#
# Usage: tools/setup.sh [--no-cross] [--no-docker]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
want_cross=1
want_docker=1
for arg in "$@"; do
    case "$arg" in
        --no-cross) want_cross=0 ;;
        --no-docker) want_docker=0 ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup: unknown option '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- Debian packages
packages=(ca-certificates curl git xz-utils file iproute2 iptables miniupnpd-iptables miniupnpc shellcheck)
# The static busybox that the container tests' images are made of (src/runtime/images.rs).
packages+=(busybox-static)
# The Debian packages' checks and their clean Debian 12 test root (tools/deb-test.sh).
packages+=(lintian debootstrap)
[ "$want_docker" = 1 ] && packages+=(docker.io)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        die "missing Debian packages: ${missing[*]}; run once as root: sudo bash $here/setup.sh"
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Packaged services must not start during installation: where systemd is not PID 1 their
    # init scripts fail, and the test router is started by the tests in their own namespaces.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [ "$created_policy" = 1 ] && rm -f "$policy"
    [ "$status" = 0 ] || die "apt-get install failed (exit $status)"
fi

# ---------------------------------------------------------------- npm: Foundry and solc-js
# Installed when the lock file changed since the last install (a stamp records its hash).
lock_hash=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
stamp="$here/node_modules/.zeppelin-lock-sha256"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
    say "installing the contract toolchain from the npm registry (tools/package-lock.json)"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" >"$stamp"
fi
for tool in anvil forge cast; do
    "$here/node_modules/@foundry-rs/$tool-linux-amd64/bin/$tool" --version >/dev/null ||
        die "$tool from the npm package does not run"
done
"$here/solc" --version | grep -q '^Version: ' || die "the solc wrapper does not run"

# ---------------------------------------------------------------- cargo-deb
# Builds the .debs (tools/package.sh); pinned, installed once into ~/.cargo/bin.
cargo_deb_version=3.8.0
if [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    say "installing cargo-deb $cargo_deb_version (cargo install --locked)"
    cargo install --quiet --locked --version "$cargo_deb_version" cargo-deb
fi

# ---------------------------------------------------------------- ARM cross toolchains
if [ "$want_cross" = 1 ]; then
    bash "$here/setup-cross.sh"
fi

# ---------------------------------------------------------------- a running Docker engine
if [ "$want_docker" = 1 ]; then
    bash "$here/dockerd.sh" start
fi

say "ready"
