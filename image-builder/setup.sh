#!/usr/bin/env bash
# image-builder/setup.sh - what the Raspberry Pi image builder and its acceptance test need on
# Debian 12, from Debian packages only:
#   mmdebstrap, qemu-user-static and binfmt-support (the ARM root file systems), e2fsprogs
#   (mke2fs -d), dosfstools and mtools (the FAT boot partition), fdisk (sfdisk), bmap-tools,
#   xz-utils, arch-test, and qemu-system-arm (qemu-system-aarch64 for the boot test).
# It also makes sure the kernel runs ARM binaries through qemu-user (binfmt_misc mounted, the
# qemu-aarch64 and qemu-arm formats enabled): mmdebstrap runs the packages' scripts that way.
#
# Idempotent and quick when everything is there. Needs root to install or to register binfmt.
# Usage: image-builder/setup.sh
set -euo pipefail

die() { printf 'image-setup: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'image-setup: %s\n' "$*" >&2; }

case "${1:-}" in
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1' (no arguments)" ;;
esac

packages=(mmdebstrap qemu-user-static binfmt-support e2fsprogs dosfstools mtools fdisk bmap-tools
    xz-utils arch-test qemu-system-arm debian-archive-keyring ca-certificates)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; run once as root: sudo bash $0"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install failed"
fi

# ARM binaries through qemu-user: the binfmt_misc file system, then the two formats.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    [ "$(id -u)" = 0 ] || die "binfmt_misc is not mounted; run once as root: sudo bash $0"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        die "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc"
fi
for fmt in qemu-aarch64 qemu-arm; do
    if ! grep -qx enabled "/proc/sys/fs/binfmt_misc/$fmt" 2>/dev/null; then
        [ "$(id -u)" = 0 ] || die "the $fmt binfmt format is not enabled; run once as root: sudo bash $0"
        update-binfmts --enable "$fmt" || die "update-binfmts --enable $fmt failed"
    fi
done
for arch in arm64 armhf; do
    arch-test "$arch" >/dev/null 2>&1 || die "this machine cannot run $arch binaries (arch-test $arch failed)"
done
say "ready"
