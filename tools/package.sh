#!/usr/bin/env bash
# tools/package.sh - the Debian packages of Zeppelin, from the existing release builds.
#
# Usage: tools/package.sh [amd64|arm64|armhf|all] [--deb-version VERSION]
#   amd64   target/release/zeppelin                              (cargo build --release)
#   arm64   target/aarch64-unknown-linux-gnu/release/zeppelin     (tools/cross-build.sh)
#   armhf   target/armv7-unknown-linux-gnueabihf/release/zeppelin (tools/cross-build.sh)
#   all     the three (default)
#   --deb-version  the package version (default: the crate version with revision 1); the
#                  package tests use it to make an older build to upgrade from
#
# Builds nothing but the packages: a missing release binary is an error naming the command
# that makes it. The man pages and completions are generated once by the host's binary
# (`zeppelin generate`, the same for every architecture) into target/assets/. Prints the path
# of each .deb (target/debian/) on stdout.
#
# cargo-deb comes from tools/setup.sh (pinned version, ~/.cargo/bin).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'package: %s\n' "$*" >&2; }

arches=()
deb_version=()
while [ $# -gt 0 ]; do
    case "$1" in
        amd64 | arm64 | armhf) arches+=("$1") ;;
        all) arches+=(amd64 arm64 armhf) ;;
        --deb-version)
            [ $# -ge 2 ] || die "--deb-version needs a value"
            deb_version=(--deb-version "$2")
            shift
            ;;
        -h | --help)
            sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$1' (amd64, arm64, armhf, all or --deb-version VERSION)" ;;
    esac
    shift
done
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)

command -v cargo-deb >/dev/null || die "cargo-deb is not installed (run tools/setup.sh)"
target_dir=${CARGO_TARGET_DIR:-$root/target}

triple_of() {
    case "$1" in
        amd64) echo "" ;;
        arm64) echo aarch64-unknown-linux-gnu ;;
        armhf) echo armv7-unknown-linux-gnueabihf ;;
    esac
}

host_bin="$target_dir/release/zeppelin"
[ -x "$host_bin" ] || die "no host release build at $host_bin (run: cargo build --release --locked)"
for arch in "${arches[@]}"; do
    triple=$(triple_of "$arch")
    [ -n "$triple" ] || continue
    [ -x "$target_dir/$triple/release/zeppelin" ] ||
        die "no $arch release build at $target_dir/$triple/release/zeppelin (run: bash tools/cross-build.sh $triple)"
done

# The changelog's latest entry names the version being packaged (lintian reads it).
if [ ${#deb_version[@]} -eq 0 ]; then
    crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
    logged=$(sed -n '1s/^zeppelin (\([^)]*\)).*/\1/p' packaging/debian/changelog)
    [ "$logged" = "$crate_version-1" ] ||
        die "packaging/debian/changelog starts with $logged, not $crate_version-1: add an entry (dch -v $crate_version-1)"
fi

# Architecture-independent assets, always regenerated so they match the binary's CLI.
rm -rf "$root/target/assets"
"$host_bin" generate man "$root/target/assets/man" >/dev/null
"$host_bin" generate completions "$root/target/assets/completions" >/dev/null

for arch in "${arches[@]}"; do
    triple=$(triple_of "$arch")
    args=(--no-build --locked "${deb_version[@]}")
    strip_env=()
    if [ -n "$triple" ]; then
        args+=(--target "$triple")
        # cargo-deb strips the symbols with the cross binutils (gcc-*-linux-gnu* bring them),
        # found through STRIP_<Debian triple>; without them the release profile's
        # debuginfo-only strip stands.
        case "$arch" in
            arm64) deb_triple=aarch64-linux-gnu ;;
            armhf) deb_triple=arm-linux-gnueabihf ;;
        esac
        if command -v "$deb_triple-strip" >/dev/null; then
            strip_env=("STRIP_$deb_triple=$(command -v "$deb_triple-strip")")
        else
            args+=(--no-strip)
        fi
    fi
    log "cargo deb ${args[*]}"
    out=$(env "${strip_env[@]}" cargo deb "${args[@]}") || die "cargo deb failed for $arch"
    deb=$(printf '%s\n' "$out" | tail -n1)
    [ -f "$deb" ] || die "cargo deb did not report a package file for $arch (got: $out)"
    log "$arch: $deb ($(stat -c %s "$deb") bytes)"
    echo "$deb"
done
