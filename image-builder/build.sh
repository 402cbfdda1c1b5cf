#!/usr/bin/env bash
# image-builder/build.sh - the flashable Raspberry Pi image of Zeppelin.
#
# Usage: image-builder/build.sh --arch arm64|armhf --deb PATH [--out DIR] [--work DIR]
#                               [--mirror URL] [--security-mirror URL] [--xz-level 0-9]
#                               [--keep-work]
#   --arch     arm64: Raspberry Pi 3, 4 and Zero 2 W (Debian's linux-image-arm64; the Pi 5
#              needs a newer kernel than bookworm's 6.1)
#              armhf: Raspberry Pi 2 (and 3 in 32-bit mode) (Debian's linux-image-armmp)
#   --deb      the zeppelin .deb of that architecture (tools/package.sh arm64|armhf)
#   --out      where the results go (default: image-builder/work/out)
#   --work     scratch directory, a few GB (default: image-builder/work/<arch>)
#   --mirror   Debian mirror (default http://deb.debian.org/debian; a
#              http://snapshot.debian.org/archive/debian/<time>/ URL pins the packages)
#   --security-mirror  the same for bookworm-security (default http://deb.debian.org/debian-security);
#              `none` leaves the security updates out (only for a mirror that cannot serve them:
#              such an image is not for release)
#   --xz-level the xz preset (default 6, for release; the CI's acceptance uses 1: a larger file,
#              made in a fraction of the time)
#   --keep-work  keep the root file system and partition files after the build
#
# Writes, in --out:
#   zeppelin-<version>-rpi-<arch>.img.xz   the image (xz), for Raspberry Pi Imager, bmaptool, dd
#   zeppelin-<version>-rpi-<arch>.img.bmap its block map (bmaptool copy)
#   zeppelin-<version>-rpi-<arch>.SHA256SUMS  checksums of the two, and of the raw image
# and prints the .img.xz path on stdout.
#
# No loop devices, mounts of images or privileged containers: the root file system is made by
# mmdebstrap (ARM programs under qemu-user), the ext4 partition by `mke2fs -d`, the FAT boot
# partition by mkfs.vfat and mtools, the MBR by sfdisk on the image file. Reproducible up to the
# package versions the mirror serves: SOURCE_DATE_EPOCH (default: the .deb's own build time)
# clamps every time stamp, UUIDs and the disk ID are derived from the version and architecture,
# files are added in sorted order. Machine-specific state (machine ID, SSH host keys, the worker
# key) is made at first boot.
#
# Needs root (mmdebstrap's root mode, file ownership in the image) and image-builder/setup.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { printf 'image-builder: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'image-builder: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

arch="" deb="" out="$here/work/out" work="" keep=0 xz_level=6
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
while [ $# -gt 0 ]; do
    case "$1" in
        --arch | --deb | --out | --work | --mirror | --security-mirror | --xz-level)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
            case "$1" in
                --arch) arch=$2 ;;
                --deb) deb=$2 ;;
                --out) out=$2 ;;
                --work) work=$2 ;;
                --mirror) mirror=$2 ;;
                --security-mirror) security=$2 ;;
                --xz-level) xz_level=$2 ;;
            esac
            shift
            ;;
        --keep-work) keep=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

# ---------------------------------------------------------------- inputs, all checked first
case "$arch" in
    arm64) kernel=linux-image-arm64 ;;
    armhf) kernel=linux-image-armmp ;;
    "") die "--arch is required (arm64 or armhf)" ;;
    *) die "--arch: '$arch' is not arm64 or armhf" ;;
esac
[ -n "$deb" ] || die "--deb is required (the zeppelin_*_$arch.deb from tools/package.sh $arch)"
[ -f "$deb" ] || die "--deb: $deb: no such file"
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
deb_package=$(dpkg-deb -f "$deb" Package 2>/dev/null) || die "--deb: $deb: not a Debian package"
[ "$deb_package" = zeppelin ] || die "--deb: $deb: package '$deb_package', not zeppelin"
deb_arch=$(dpkg-deb -f "$deb" Architecture)
[ "$deb_arch" = "$arch" ] || die "--deb: $deb: architecture $deb_arch, not $arch"
deb_version=$(dpkg-deb -f "$deb" Version)
# (The listing is read whole: `grep -q` on a pipe would stop dpkg-deb with SIGPIPE.)
deb_files=$(dpkg-deb -c "$deb") || die "--deb: $deb: cannot list its files"
grep -q ' \./usr/bin/zeppelin$' <<<"$deb_files" || die "--deb: $deb: has no /usr/bin/zeppelin"
grep -q 'zeppelin\.service$' <<<"$deb_files" || die "--deb: $deb: has no zeppelin.service"
version=${deb_version%-*}
[[ $version =~ ^[0-9A-Za-z.+~]+$ ]] || die "--deb: $deb: version '$deb_version' is not usable in a file name"
sources=("deb $mirror bookworm main non-free-firmware" "deb $mirror bookworm-updates main non-free-firmware")
if [ "$security" = none ]; then
    log "warning: --security-mirror none: the image gets no security updates (not for release)"
else
    sources+=("deb $security bookworm-security main non-free-firmware")
fi
[[ $xz_level =~ ^[0-9]$ ]] || die "--xz-level: '$xz_level' is not a preset from 0 to 9"
for url in "$mirror" "${security/#none/http://none}"; do
    [[ $url =~ ^(https?|file)://[^[:space:]]+$ ]] || die "mirror '$url' is not an http(s):// or file:// URL"
done
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap's root mode and root-owned files in the image)"
for tool in mmdebstrap mke2fs debugfs dumpe2fs e2fsck mkfs.vfat mcopy mmd sfdisk bmaptool xz sha256sum dpkg-deb arch-test; do
    command -v "$tool" >/dev/null || die "$tool is missing (run image-builder/setup.sh)"
done
arch-test "$arch" >/dev/null 2>&1 || die "this machine cannot run $arch programs (run image-builder/setup.sh)"
work=${work:-$here/work/$arch}
mkdir -p "$out" "$work" || die "cannot create $out or $work"
out=$(cd "$out" && pwd) work=$(cd "$work" && pwd)
[ -w "$out" ] || die "--out: $out is not writable"
free_kib=$(df -Pk "$work" | awk 'NR==2 { print $4 }')
[ "$free_kib" -ge $((6 * 1024 * 1024)) ] || die "--work: $work has $((free_kib / 1024)) MiB free; the build needs 6 GiB"

name=zeppelin-$version-rpi-$arch
# Time stamps: the caller's SOURCE_DATE_EPOCH, else the .deb's (its control file's mtime).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(dpkg-deb --ctrl-tarfile "$deb" | tar -tv --full-time 2>/dev/null |
        awk '{ print $4 " " $5 }' | sort | tail -n1 | xargs -I{} date -u -d {} +%s)
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH '$SOURCE_DATE_EPOCH' is not a number of seconds"
export SOURCE_DATE_EPOCH
# Fixed identifiers, derived from what is built: the same inputs give the same image.
seed=$(printf 'zeppelin-image %s %s' "$version" "$arch" | sha256sum | cut -c1-64)
uuid_of() { local h=${seed:$1:32}; printf '%s-%s-4%s-8%s-%s' "${h:0:8}" "${h:8:4}" "${h:13:3}" "${h:17:3}" "${h:20:12}"; }
root_uuid=$(uuid_of 0)
hash_seed=$(uuid_of 32)
disk_id=0x${seed:0:8}
fat_id=${seed:8:8}

log "$name: Debian bookworm $arch, zeppelin $deb_version, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
start=$(date +%s)
rootfs=$work/rootfs
# A build killed inside mmdebstrap can leave /proc, /sys or /dev mounted in the root: never
# delete through them.
if findmnt -rn -o TARGET | grep -q "^$work/"; then
    die "something is mounted under $work (an interrupted build?): umount it first ($(findmnt -rn -o TARGET | grep "^$work/" | tr '\n' ' '))"
fi
rm -rf "$rootfs" "${work:?}/boot" "$work"/*.img "$work"/*.vfat "$work"/*.ext4
mkdir -p "$rootfs"

# ---------------------------------------------------------------- root file system
packages=(
    systemd systemd-sysv systemd-resolved systemd-timesyncd udev dbus kmod netbase iproute2
    ca-certificates openssh-server sudo less
    "$kernel" initramfs-tools zstd raspi-firmware firmware-brcm80211 wpasupplicant
    cloud-guest-utils fdisk e2fsprogs dosfstools
    docker.io
)
include=$(IFS=,; echo "${packages[*]}")
log "mmdebstrap ($((${#packages[@]})) packages and their dependencies)"
mmdebstrap --mode=root --variant=minbase --architectures="$arch" \
    --components="main non-free-firmware" \
    --include="$include" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --setup-hook='mkdir -p "$1/boot/firmware"' \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.zeppelin-image --add /usr/sbin/update-initramfs' \
    --essential-hook='printf "#!/bin/sh\\n# diverted while the image is built (image-builder/customize.sh)\\nexit 0\\n" >"$1/usr/sbin/update-initramfs" && chmod 0755 "$1/usr/sbin/update-initramfs"' \
    --customize-hook="copy-in '$deb' /tmp" \
    --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/$(basename "$deb")" \
    --customize-hook='rm -f "$1"/tmp/*.deb' \
    --customize-hook="bash '$here/customize.sh' \"\$1\" $arch" \
    bookworm "$rootfs" "${sources[@]}" >&2 ||
    die "mmdebstrap failed"
log "root file system made in $(($(date +%s) - start)) s"
assembly_start=$(date +%s)

# mmdebstrap's clean-up leaves an empty machine ID; "uninitialized" makes the first boot one
# (systemd makes the ID then, and runs its first-boot units).
echo uninitialized >"$rootfs/etc/machine-id"
[ -f "$rootfs/etc/zeppelin/zeppelin.toml" ] || die "the zeppelin package is not installed in the root file system"

# The boot partition's content moves out of the root; its mount point stays.
mv "$rootfs/boot/firmware" "$work/boot"
mkdir -p "$rootfs/boot/firmware"
cp "$rootfs/etc/zeppelin/zeppelin.toml" "$work/boot/zeppelin.toml.example"
cat >"$work/boot/README.txt" <<EOF
Zeppelin $version for Raspberry Pi ($arch, Debian bookworm)

Put your configuration here, on this partition, then start the Pi:
  zeppelin.toml        the daemon's configuration (copy zeppelin.toml.example and edit it;
                       at least [chain] and [worker] price_per_second). Required.
  deployment.json      the deployment file, if zeppelin.toml names
                       deployment_file = "/etc/zeppelin/deployment.json". Optional.
  authorized_keys      SSH public keys for the user "admin". Without it SSH is off.
  wpa_supplicant.conf  Wi-Fi (network={ ssid="..." psk="..." }). Optional; wired is DHCP.
  network/*.network    systemd-networkd files (e.g. a static address). Optional.
After the first start, zeppelin-address.txt here holds the worker's address: fund it.
Files changed here are applied at the next boot.
EOF

# Every time stamp clamped to SOURCE_DATE_EPOCH.
find "$rootfs" "$work/boot" -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0 -r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"

# ---------------------------------------------------------------- partitions and the image
mib=$((1024 * 1024))
boot_mib=256
used_mib=$(($(du -s --block-size=1M "$rootfs" | cut -f1)))
root_mib=$(((used_mib * 5 / 4 + 300 + 63) / 64 * 64))
log "root file system: $used_mib MiB used, partition $root_mib MiB (grown to the card at first boot)"

log "FAT boot partition ($boot_mib MiB)"
vfat=$work/boot.vfat
rm -f "$vfat"
mkfs.vfat -F 32 -n RASPIFIRM -i "$fat_id" --invariant -C "$vfat" $((boot_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
(
    cd "$work/boot"
    find . -mindepth 1 -type d -printf '%P\n' | LC_ALL=C sort | while IFS= read -r d; do mmd -i "$vfat" "::/$d"; done
    find . -type f -printf '%P\n' | LC_ALL=C sort | while IFS= read -r f; do mcopy -m -i "$vfat" "$f" "::/$f"; done
)

log "ext4 root partition ($root_mib MiB)"
ext4=$work/root.ext4
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -t ext4 -L RASPIROOT -U "$root_uuid" \
    -E "hash_seed=$hash_seed,root_owner=0:0" -b 4096 -d "$rootfs" "$ext4" "${root_mib}M" >&2
# mke2fs -d copies each file's access and change times from this machine (the modification
# times are already clamped, but the change time cannot be set on the host): set both on every
# inode in use, so two builds give the same bytes.
inode_count=$(dumpe2fs -h "$ext4" 2>/dev/null | awk -F: '/^Inode count/ { print $2 + 0 }')
[ "${inode_count:-0}" -gt 0 ] || die "cannot read the inode count of $ext4"
seq 1 "$inode_count" | sed 's/.*/testi <&>/' | debugfs -f - "$ext4" 2>/dev/null |
    sed -n 's/^Inode \([0-9]*\) is marked in use$/\1/p' |
    awk -v t="$SOURCE_DATE_EPOCH" '{ print "set_inode_field <" $1 "> atime @" t; print "set_inode_field <" $1 "> ctime @" t }' |
    E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f - "$ext4" >/dev/null 2>&1 ||
        die "debugfs could not set the time stamps in $ext4"
e2fsck -fn "$ext4" >/dev/null 2>&1 || die "e2fsck finds errors in $ext4"

img=$work/$name.img
boot_start=$((4 * mib / 512))
root_start=$((boot_start + boot_mib * mib / 512))
total_mib=$((4 + boot_mib + root_mib))
rm -f "$img"
truncate -s "${total_mib}M" "$img"
sfdisk --quiet "$img" <<EOF
label: dos
label-id: $disk_id
unit: sectors

start=$boot_start, size=$((boot_mib * mib / 512)), type=c, bootable
start=$root_start, size=$((root_mib * mib / 512)), type=83
EOF
dd if="$vfat" of="$img" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$ext4" of="$img" bs=1M seek=$((4 + boot_mib)) conv=notrunc,sparse status=none
touch --date="@$SOURCE_DATE_EPOCH" "$img"

log "bmap, xz, checksums"
bmaptool -q create -o "$out/$name.img.bmap" "$img"
rm -f "$out/$name.img.xz"
xz -T0 "-$xz_level" --keep --stdout "$img" >"$out/$name.img.xz"
touch --date="@$SOURCE_DATE_EPOCH" "$out/$name.img.xz" "$out/$name.img.bmap"
raw_sum=$(sha256sum "$img" | cut -d' ' -f1)
(
    cd "$out"
    sha256sum "$name.img.xz" "$name.img.bmap"
    echo "$raw_sum  $name.img"
) >"$out/$name.SHA256SUMS"

if [ "$keep" = 0 ]; then
    rm -rf "$rootfs" "${work:?}/boot" "$vfat" "$ext4" "$img"
fi
log "partitions, image, bmap, xz -$xz_level and checksums in $(($(date +%s) - assembly_start)) s"
log "$name: done in $(($(date +%s) - start)) s: $out/$name.img.xz ($(stat -c %s "$out/$name.img.xz") bytes," \
    "image $((total_mib)) MiB)"
echo "$out/$name.img.xz"
