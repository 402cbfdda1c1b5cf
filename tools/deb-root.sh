#!/usr/bin/env bash
# tools/deb-root.sh - a clean Debian 12 root for the package tests, as an image in our dockerd.
#
# Usage: tools/deb-root.sh        print the image name (building it first if needed)
#
# The root is made with debootstrap (minbase, plus systemd as init and what the zeppelin package
# depends on: adduser, ca-certificates and the Docker engine package docker.io). Its tarball is cached under
# ~/.cache/zeppelin/ (or $ZEPPELIN_CACHE) with the hash of the recipe below in its name, and
# imported as the image `zeppelin-deb-root:<hash>`; a changed recipe makes a new one. The
# Docker units are masked in the image: a nested engine cannot run in these test containers.
#
# Needs root (debootstrap, chroot) and the Debian mirror the first time; later runs only check
# that the image exists (or import the cached tarball).
set -euo pipefail

cache="${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}"
die() { printf 'deb-root: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'deb-root: %s\n' "$*" >&2; }

suite=bookworm
mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv,dbus,adduser,procps,ca-certificates
extra=docker.io
recipe="debootstrap --variant=minbase --include=$include $suite $mirror; apt-get install --no-install-recommends $extra; mask docker.service docker.socket containerd.service; v1"
hash=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
image="zeppelin-deb-root:$hash"
tarball="$cache/debian-root-$hash.tar.gz"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi
if [ ! -f "$tarball" ]; then
    [ "$(id -u)" = 0 ] || die "building the Debian root needs root (debootstrap): sudo bash $0"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (run tools/setup.sh)"
    work=$(mktemp -d /var/tmp/zeppelin-deb-root.XXXXXX)
    cleanup() {
        for m in proc sys dev/pts dev; do umount "$work/root/$m" 2>/dev/null || true; done
        rm -rf "$work"
    }
    trap cleanup EXIT
    log "debootstrap $suite ($include) into $work/root"
    debootstrap --variant=minbase --include="$include" "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    log "installing $extra (services kept from starting in the chroot)"
    printf '#!/bin/sh\nexit 101\n' >"$work/root/usr/sbin/policy-rc.d"
    chmod 755 "$work/root/usr/sbin/policy-rc.d"
    mount -t proc proc "$work/root/proc"
    chroot "$work/root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $extra \
        >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; die "apt-get install $extra failed"; }
    umount "$work/root/proc"
    rm -f "$work/root/usr/sbin/policy-rc.d"
    chroot "$work/root" apt-get clean
    rm -rf "$work/root/var/lib/apt/lists/"*
    for unit in docker.service docker.socket containerd.service; do
        ln -sf /dev/null "$work/root/etc/systemd/system/$unit"
    done
    # A container's hostname and resolver come from the engine.
    : >"$work/root/etc/machine-id"
    mkdir -p "$cache"
    tar -C "$work/root" --numeric-owner -cf - . | gzip -1 >"$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    log "cached $tarball ($(stat -c %s "$tarball") bytes)"
fi
# Roots of older recipes are not used again.
for old in "$cache"/debian-root-*.tar.gz; do
    [ "$old" = "$tarball" ] || [ ! -e "$old" ] || { log "removing the outdated $old"; rm -f "$old"; }
done
docker image ls --format '{{.Repository}}:{{.Tag}}' zeppelin-deb-root | while read -r old; do
    [ "$old" = "$image" ] || docker rmi "$old" >/dev/null 2>&1 || true
done
log "importing $tarball as $image"
docker import --change 'CMD ["/sbin/init"]' "$tarball" "$image" >/dev/null
echo "$image"
