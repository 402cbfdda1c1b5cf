#!/usr/bin/env bash
# image-builder/customize.sh ROOTFS ARCH - the image's own configuration, run by build.sh as
# mmdebstrap's last customize hook (the root file system's /proc, /sys and /dev are mounted, so
# its programs run under chroot): the first-boot files (overlay/), the administrator account,
# the units, the boot partition's files from raspi-firmware, and the removal of what must be
# made per machine at first boot.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { printf 'image-builder: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'image-builder: %s\n' "$*" >&2; }
[ $# = 2 ] && [ -d "$1" ] || die "usage: customize.sh ROOTFS arm64|armhf"
rootfs=$1 arch=$2

log "configuring the image"
cp -a "$here/overlay/." "$rootfs/"
# Whoever owns the checkout, the overlay's files belong to root in the image.
(cd "$here/overlay" && find . -mindepth 1 -print0) | (cd "$rootfs" && xargs -0 chown -h root:root)
chmod 0440 "$rootfs/etc/sudoers.d/admin"
cp "$here"/overlay/usr/lib/zeppelin-image/network/*.network "$rootfs/etc/systemd/network/"
in_root() { chroot "$rootfs" "$@"; }
# The administrator: no password (key login only, when the boot partition gives a key).
in_root useradd --create-home --shell /bin/bash --groups sudo,docker --password '*' "admin"
in_root passwd --lock root >/dev/null
in_root systemctl enable --quiet zeppelin-boot-config.service systemd-networkd.service \
    systemd-resolved.service systemd-timesyncd.service docker.service
# Off until the boot partition says otherwise (boot-config).
in_root systemctl disable --quiet ssh.service zeppelin.service
# A headless appliance.
in_root systemctl set-default --quiet multi-user.target
ln -sf /run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
# The kernel's boot files on the boot partition (raspi-firmware's hook: firmware, kernel, initrd,
# device trees, config.txt, cmdline.txt), with the root by label and the consoles: the serial
# port and, last (the system console), the screen.
case "$arch" in
    arm64) consoles="ttyS1,115200 tty0" ;;
    armhf) consoles="ttyAMA0,115200 tty0" ;;
esac
sed -i -e 's|^#\?ROOTPART=.*|ROOTPART=LABEL=RASPIROOT|' -e "s|^#\\?CONSOLES=.*|CONSOLES=\"$consoles\"|" \
    "$rootfs/etc/default/raspi-firmware"
grep -qx 'ROOTPART=LABEL=RASPIROOT' "$rootfs/etc/default/raspi-firmware" || die "could not set ROOTPART in /etc/default/raspi-firmware"
kver=$(basename "$(ls -d "$rootfs"/lib/modules/* | sort -V | tail -n1)")
# build.sh diverted update-initramfs while the packages were installed (each kernel, udev or
# zstd trigger would have made the initrd again: ten minutes each under qemu-user); make it once.
if in_root dpkg-divert --list /usr/sbin/update-initramfs | grep -q zeppelin-image; then
    rm -f "$rootfs/usr/sbin/update-initramfs"
    in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
    log "making the initrd of $kver (MODULES=most)"
    in_root update-initramfs -c -k "$kver" >&2
fi
in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware >&2
[ -f "$rootfs/boot/firmware/config.txt" ] || die "raspi-firmware wrote no config.txt in /boot/firmware"
[ -f "$rootfs/boot/firmware/vmlinuz-$kver" ] || die "raspi-firmware did not copy the kernel $kver to /boot/firmware"
[ -f "$rootfs/boot/firmware/initrd.img-$kver" ] || die "raspi-firmware did not copy the initrd of $kver to /boot/firmware"
grep -q 'root=LABEL=RASPIROOT' "$rootfs/boot/firmware/cmdline.txt" || die "cmdline.txt does not name root=LABEL=RASPIROOT"

# Machine-specific state is made at first boot; caches and logs are not shipped.
rm -f "$rootfs"/etc/ssh/ssh_host_*
rm -f "$rootfs/var/lib/dbus/machine-id"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/cache/man \
    "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/var/lib/systemd/catalog/database
find "$rootfs/var/log" -type f -exec truncate -s 0 {} +
rm -f "$rootfs/etc/hostname.dpkg-"* "$rootfs/etc/hosts.dpkg-"*
echo zeppelin >"$rootfs/etc/hostname"

