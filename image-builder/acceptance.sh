#!/usr/bin/env bash
# image-builder/acceptance.sh - acceptance of the Raspberry Pi images.
#
# Usage: image-builder/acceptance.sh [--full] [--deb-arm64 PATH] [--deb-armhf PATH]
#                                    [--image-arm64 PATH] [--image-armhf PATH] [--xz-level N]
#                                    [--mirror URL] [--security-mirror URL|none] [--keep]
#   (reduced form, for CI)
#     1. builds the arm64 image (image-builder/build.sh) unless --image-arm64 names one;
#     2. checks it: partition table, boot files, the installed zeppelin package, no password,
#        SSH off, no machine ID or SSH host keys baked in;
#     3. boots it under qemu-system-aarch64 (software emulation, -M virt, the image's own Debian
#        kernel and initrd taken from its boot partition, the image as a virtio disk grown by
#        2 GiB, qemu's user networking) with a zeppelin.toml and an authorized_keys written onto
#        its boot partition, pointing at an anvil devnet on this host (10.0.2.2 from the guest)
#        with a WorkerDispatcher deployed; reads the worker's address from the serial console,
#        funds it, and waits for its WorkerRegistered event on chain; then logs in over SSH
#        (the key given) and checks multi-user, the service active, the unique hostname and the
#        grown root file system.
#   --full, in addition
#     4. changes the price in zeppelin.toml on the boot partition, boots again and checks that the
#        change is applied (the daemon's updateWorker: a WorkerUpdated event with the new price on
#        chain), the key (address) and hostname kept and the service active again;
#     5. builds the armhf image and checks its partition table, boot files (Pi 2 device tree)
#        and installed package.
#   --deb-arm64/--deb-armhf  the .debs (default: the newest target/debian/zeppelin_*_<arch>.deb,
#              made by tools/cross-build.sh <triple> and tools/package.sh <arch>)
#   --xz-level the images' xz preset (build.sh --xz-level; default 6; CI uses 1)
#   --mirror, --security-mirror  passed to build.sh (see build.sh --help)
#   --keep     keep the scratch files (image-builder/work/acceptance)
#
# Prints the figures: build time and sizes, qemu start to registered. Needs root,
# image-builder/setup.sh and tools/setup.sh (anvil, cast).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
die() { printf 'acceptance: FAIL: %s\n' "$*" >&2; exit 1; }
log() { printf 'acceptance: %s\n' "$*" >&2; }
ok() { printf 'acceptance: ok: %s\n' "$*" >&2; }

full=0 keep=0 xz_level=6 mirror_args=() deb_arm64="" deb_armhf="" image_arm64="" image_armhf=""
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1 ;;
        --keep) keep=1 ;;
        --deb-arm64 | --deb-armhf | --image-arm64 | --image-armhf | --xz-level | --mirror | --security-mirror)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
            case "$1" in
                --deb-arm64) deb_arm64=$2 ;;
                --deb-armhf) deb_armhf=$2 ;;
                --image-arm64) image_arm64=$2 ;;
                --image-armhf) image_armhf=$2 ;;
                --xz-level) xz_level=$2 ;;
                --mirror | --security-mirror) mirror_args+=("$1" "$2") ;;
            esac
            shift
            ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

newest_deb() {
    local d
    d=$(ls -t "${CARGO_TARGET_DIR:-$root/target}"/debian/zeppelin_*_"$1".deb 2>/dev/null | head -n1 || true)
    [ -n "$d" ] || die "no zeppelin .deb for $1 in target/debian (run: bash tools/cross-build.sh $2 && bash tools/package.sh $1)"
    echo "$d"
}

bash "$here/setup.sh"
# shellcheck source=tools/env.sh
source "$root/tools/env.sh"
for tool in anvil cast qemu-system-aarch64 ssh ssh-keygen mcopy sfdisk debugfs python3 xz; do
    command -v "$tool" >/dev/null || die "$tool is missing (run tools/setup.sh and image-builder/setup.sh)"
done

work=$here/work/acceptance
out=$work/out
# An interrupted build can leave /proc, /sys or /dev mounted in its root: never delete through them.
if findmnt -rn -o TARGET | grep -q "^$work/"; then
    die "something is mounted under $work (an interrupted build?): umount it first ($(findmnt -rn -o TARGET | grep "^$work/" | tr '\n' ' '))"
fi
rm -rf "$work"
mkdir -p "$out"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$keep" = 0 ]; then
        if findmnt -rn -o TARGET | grep -q "^$work/"; then
            log "not removing $work: something is still mounted under it"
        else
            rm -rf "$work"
        fi
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- building
build() { # arch deb -> image path; prints the figures
    local arch=$1 deb=$2 t0 img
    t0=$(date +%s)
    img=$(bash "$here/build.sh" --arch "$arch" --deb "$deb" --out "$out" --work "$work/build-$arch" \
        --xz-level "$xz_level" "${mirror_args[@]}") ||
        die "building the $arch image failed"
    log "figure: $arch image built in $(($(date +%s) - t0)) s; $(basename "$img") $(stat -c %s "$img") bytes"
    echo "$img"
}

if [ -z "$image_arm64" ]; then
    [ -n "$deb_arm64" ] || deb_arm64=$(newest_deb arm64 aarch64-unknown-linux-gnu)
    image_arm64=$(build arm64 "$deb_arm64")
fi
[ -f "$image_arm64" ] || die "--image-arm64: $image_arm64: no such file"

# ---------------------------------------------------------------- static checks
# Partition offsets (bytes) of an image file: "start size" per partition.
parts() { sfdisk -J "$1" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
assert t["label"] == "dos", t["label"]
for p in t["partitions"]:
    print(p["start"] * 512, p["size"] * 512, p["type"], "boot" if p.get("bootable") else "-")
'; }

check_image() { # arch image.img.xz
    local arch=$1 xzimg=$2 img table boot_off root_off root_size f status dtb
    img=$work/check-$arch.img
    xz -dc "$xzimg" >"$img"
    [ -f "${xzimg%.xz}.bmap" ] || die "$arch: no .bmap beside $xzimg"
    (cd "$(dirname "$xzimg")" && sha256sum --quiet -c "$(basename "${xzimg%.img.xz}").SHA256SUMS" --ignore-missing) ||
        die "$arch: checksums do not match"
    mapfile -t table < <(parts "$img")
    [ ${#table[@]} = 2 ] || die "$arch: ${#table[@]} partitions, not 2"
    read -r boot_off _ t b <<<"${table[0]}"
    [ "$t" = c ] && [ "$b" = boot ] || die "$arch: partition 1 is type $t ($b), not a bootable FAT32 (c)"
    read -r root_off root_size t _ <<<"${table[1]}"
    [ "$t" = 83 ] || die "$arch: partition 2 is type $t, not Linux (83)"
    ok "$arch: MBR with a bootable FAT32 boot partition and a Linux root partition"

    export MTOOLS_SKIP_CHECK=1
    [ "$(mlabel -s -i "$img@@$boot_off" :: | sed 's/ *$//')" = " Volume label is RASPIFIRM" ] ||
        die "$arch: the boot partition's label is not RASPIFIRM: $(mlabel -s -i "$img@@$boot_off" ::)"
    local listing
    listing=$(mdir -b -i "$img@@$boot_off" ::/ | sed 's|^::/||')
    case "$arch" in
        arm64) dtb=bcm2837-rpi-3-b.dtb ;;
        armhf) dtb=bcm2836-rpi-2-b.dtb ;;
    esac
    for f in config.txt cmdline.txt bootcode.bin start.elf fixup.dat start4.elf "$dtb" zeppelin.toml.example README.txt; do
        grep -qx "$f" <<<"$listing" || die "$arch: the boot partition has no $f (it has: $(tr '\n' ' ' <<<"$listing"))"
    done
    grep -q '^vmlinuz-' <<<"$listing" || die "$arch: the boot partition has no kernel (vmlinuz-*)"
    grep -q '^initrd.img-' <<<"$listing" || die "$arch: the boot partition has no initrd (initrd.img-*)"
    mtype -i "$img@@$boot_off" ::/cmdline.txt | grep -q 'root=LABEL=RASPIROOT' ||
        die "$arch: cmdline.txt does not boot root=LABEL=RASPIROOT: $(mtype -i "$img@@$boot_off" ::/cmdline.txt)"
    ! grep -qx zeppelin.toml <<<"$listing" || die "$arch: the image ships a zeppelin.toml (the user's to write)"
    ok "$arch: boot partition RASPIFIRM with firmware, kernel, initrd, $dtb, cmdline root=LABEL=RASPIROOT"

    local rootimg=$work/check-$arch.ext4
    dd if="$img" of="$rootimg" bs=1M iflag=skip_bytes,count_bytes skip="$root_off" count="$root_size" status=none
    rm -f "$img"
    [ "$(dumpe2fs -h "$rootimg" 2>/dev/null | sed -n 's/^Filesystem volume name: *//p')" = RASPIROOT ] ||
        die "$arch: the root file system's label is not RASPIROOT"
    dbg() { debugfs -R "$1" "$rootimg" 2>/dev/null; }
    status=$(dbg 'cat /var/lib/dpkg/status' | awk -v RS= '/^Package: zeppelin\n/')
    grep -qx 'Status: install ok installed' <<<"$status" || die "$arch: zeppelin is not installed in the root file system"
    grep -qx "Architecture: $arch" <<<"$status" || die "$arch: the installed zeppelin is not $arch: $status"
    ok "$arch: zeppelin $(sed -n 's/^Version: //p' <<<"$status") ($arch) installed"
    for f in /usr/bin/zeppelin /usr/sbin/dockerd /usr/lib/zeppelin-image/boot-config /etc/ssh/sshd_config.d/zeppelin-image.conf; do
        dbg "stat $f" | grep -q 'Type: regular' || die "$arch: $f is missing in the root file system"
    done
    [ "$(dbg 'cat /etc/machine-id')" = uninitialized ] || die "$arch: a machine ID is baked into the image"
    ! dbg 'ls /etc/ssh' | grep -q ssh_host_ || die "$arch: SSH host keys are baked into the image"
    dbg 'cat /etc/shadow' | awk -F: '$2 != "*" && $2 !~ /^!/ { bad = bad " " $1 } END { if (bad) { print "accounts with a password:" bad; exit 1 } }' ||
        die "$arch: an account has a password"
    dbg 'stat /etc/systemd/system/multi-user.target.wants/ssh.service' | grep -q 'Type: symlink' &&
        die "$arch: SSH is enabled in the image"
    dbg 'stat /etc/systemd/system/sysinit.target.wants/zeppelin-boot-config.service' | grep -q 'Type: symlink' ||
        die "$arch: zeppelin-boot-config.service is not enabled"
    ok "$arch: no password, no machine ID, no SSH host keys, SSH off, first-boot set-up enabled"
    rm -f "$rootimg"
}

check_image arm64 "$image_arm64"

# ---------------------------------------------------------------- the devnet
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rpc_port=$(free_port)
rpc=http://127.0.0.1:$rpc_port
# qemu's user networking reaches the host's loopback as 10.0.2.2.
anvil --host 127.0.0.1 --port "$rpc_port" --block-time 1 --silent >"$work/anvil.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do cast block-number --rpc-url "$rpc" >/dev/null 2>&1 && break; sleep 0.2; done
cast block-number --rpc-url "$rpc" >/dev/null 2>&1 || die "anvil did not start (see $work/anvil.log)"
# anvil's well-known first dev account deploys and funds.
dev_key=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
read -r bytecode registered_topic < <(python3 - "$root/contracts/abi/WorkerDispatcher.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ev = next(x for x in d["abi"] if x["type"] == "event" and x["name"] == "WorkerRegistered")
def t(i):
    return "(" + ",".join(t(c) for c in i["components"]) + ")" + i["type"][5:] if i["type"].startswith("tuple") else i["type"]
print(d["bytecode"]["object"], "WorkerRegistered(" + ",".join(t(i) for i in ev["inputs"]) + ")")
EOF
)
# The deploy script's default parameters (contracts/script/Deploy.s.sol).
params=$(cast abi-encode 'constructor((uint96,uint96,uint96,uint96,uint32,uint32,uint32,uint32,uint32,uint32,uint8))' \
    '(100000000000000000,100000000000000,10000000000000000,5000000000000000,900,3600,3600,600,720,86400,3)')
deploy_json=$(cast send --json --rpc-url "$rpc" --private-key "$dev_key" --create "$bytecode${params#0x}")
read -r dispatcher deploy_block < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["contractAddress"], int(r["blockNumber"], 16))' "$deploy_json")
[ -n "$dispatcher" ] || die "deploying the WorkerDispatcher failed: $deploy_json"
ok "devnet: anvil at $rpc, WorkerDispatcher $dispatcher (block $deploy_block)"

# ---------------------------------------------------------------- booting the arm64 image
disk=$work/boot-arm64.img
xz -dc "$image_arm64" >"$disk"
original_size=$(stat -c %s "$disk")
truncate -s +2G "$disk" # the card is larger than the image: the first boot grows the root
mapfile -t table < <(parts "$disk")
read -r boot_off _ <<<"${table[0]}"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$disk@@$boot_off" "::/$(mdir -b -i "$disk@@$boot_off" ::/ | sed 's|^::/||' | grep '^vmlinuz-' | head -n1)" "$work/vmlinuz"
mcopy -i "$disk@@$boot_off" "::/$(mdir -b -i "$disk@@$boot_off" ::/ | sed 's|^::/||' | grep '^initrd.img-' | head -n1)" "$work/initrd.img"

ssh-keygen -q -t ed25519 -N '' -C acceptance -f "$work/id_ed25519"
price="1 gwei"
write_config() { # price
    cat >"$work/zeppelin.toml" <<EOF
# Written by image-builder/acceptance.sh onto the boot partition.
[chain]
rpc_url = "http://10.0.2.2:$rpc_port"
dispatcher = "$dispatcher"
deploy_block = $deploy_block
confirmations = 0
poll_interval = "1s"

[worker]
price_per_second = "$1"

[nat]
mode = "off"
EOF
    mcopy -o -i "$disk@@$boot_off" "$work/zeppelin.toml" ::/zeppelin.toml
}
write_config "$price"
mcopy -i "$disk@@$boot_off" "$work/id_ed25519.pub" ::/authorized_keys

ssh_port=$(free_port)
serial=$work/serial.log
boot_qemu() { # serial log file
    : >"$1"
    qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2048 -display none -monitor none \
        -serial "file:$1" -no-reboot \
        -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
        -append "root=LABEL=RASPIROOT rw rootwait console=ttyAMA0 panic=10" \
        -drive "file=$disk,format=raw,if=virtio" \
        -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$ssh_port-:22" -device virtio-net-pci,netdev=net0,romfile= \
        >"$work/qemu.log" 2>&1 &
    qemu_pid=$!
    pids+=("$qemu_pid")
}
wait_serial() { # file pattern timeout-seconds -> the first matching line
    local i line
    for ((i = 0; i < $3; i++)); do
        line=$(grep -a -m1 -E "$2" "$1" 2>/dev/null || true)
        [ -n "$line" ] && { echo "$line"; return 0; }
        kill -0 "$qemu_pid" 2>/dev/null || { tail -n 40 "$1" >&2; die "qemu exited (waiting for /$2/)"; }
        sleep 1
    done
    tail -n 40 "$1" >&2
    die "no /$2/ on the serial console within $3 s"
}
guest() { ssh -q -i "$work/id_ed25519" -p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o ConnectTimeout=20 admin@127.0.0.1 "$@"; }
wait_ssh() {
    local i
    for ((i = 0; i < 120; i++)); do guest true 2>/dev/null && return 0; sleep 5; done
    die "no SSH login to the guest within 10 minutes"
}

log "booting the arm64 image under qemu-system-aarch64 (software emulation)"
t0=$(date +%s)
boot_qemu "$serial"
line=$(wait_serial "$serial" 'zeppelin-image: worker address 0x[0-9a-f]{40}' 1800)
address=$(grep -oE '0x[0-9a-f]{40}' <<<"$line")
t_address=$(($(date +%s) - t0))
ok "the guest made its worker key: $address ($t_address s after qemu start)"
cast send --rpc-url "$rpc" --private-key "$dev_key" --value 10ether "$address" >/dev/null
registered=""
topic=$(cast keccak "$registered_topic")
padded=0x000000000000000000000000${address#0x}
for ((i = 0; i < 900; i++)); do
    registered=$(cast logs --rpc-url "$rpc" --from-block "$deploy_block" --address "$dispatcher" "$topic" "$padded" 2>/dev/null | grep -i transactionHash || true)
    [ -n "$registered" ] && break
    kill -0 "$qemu_pid" 2>/dev/null || die "qemu exited before the worker registered"
    sleep 2
done
[ -n "$registered" ] || { tail -n 40 "$serial" >&2; die "no WorkerRegistered for $address within 30 minutes of funding"; }
t_registered=$(($(date +%s) - t0))
ok "WorkerRegistered for $address on chain"
# getWorker(address): the Worker record, 15 static words; pricePerSecond is the eighth.
price_on_chain() {
    local raw
    raw=$(cast call --rpc-url "$rpc" "$dispatcher" 'getWorker(address)' "$address") || return 1
    cast to-dec "0x${raw:$((2 + 7 * 64)):64}"
}
[ "$(price_on_chain)" = 1000000000 ] || die "the registered price is $(price_on_chain) wei/s, not the configured 1 gwei"
ok "registered at the boot partition's price, 1 gwei per second"
log "figure: qemu start to worker key $t_address s, to registered on chain $t_registered s"
# A Pi loses power without warning: the initrd checks the root before mounting it.
grep -a -q '^RASPIROOT: clean' "$serial" ||
    die "the initrd did not check the root file system (no 'RASPIROOT: clean' on the serial console)"
ok "the initrd checked the root file system (fsck.ext4) before mounting it"

wait_ssh
state=$(guest systemctl is-system-running --wait || true)
case "$state" in
    running) ;;
    *) die "the guest's system is '$state', not running; failed units: $(guest systemctl --failed --no-legend --plain | tr '\n' ';')" ;;
esac
[ "$(guest systemctl is-active multi-user.target)" = active ] || die "the guest did not reach multi-user.target"
[ "$(guest systemctl is-active zeppelin.service)" = active ] || die "zeppelin.service is not active"
[ "$(guest systemctl is-enabled zeppelin.service)" = enabled ] || die "zeppelin.service is not enabled"
ok "guest: multi-user, system running, zeppelin.service enabled and active, SSH with the boot partition's key"
host=$(guest hostname)
[[ $host =~ ^zeppelin-[0-9a-f]{6}$ ]] || die "the guest's hostname '$host' is not zeppelin-<6 hex digits>"
root_bytes=$(guest df -B1 --output=size / | tail -n1 | tr -d ' ')
[ "$root_bytes" -gt "$original_size" ] || die "the root file system ($root_bytes bytes) was not grown past the image ($original_size bytes)"
ok "guest: hostname $host, root file system grown to $((root_bytes / 1024 / 1024)) MiB (image $((original_size / 1024 / 1024)) MiB)"
guest sudo cat /boot/firmware/zeppelin-address.txt | grep -qx "$address" || die "zeppelin-address.txt does not hold $address"
! ssh -q -p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    -o PreferredAuthentications=password,keyboard-interactive -o PubkeyAuthentication=no admin@127.0.0.1 true 2>/dev/null ||
    die "SSH accepted a login without a key"
ok "guest: zeppelin-address.txt written; SSH refuses logins without a key"

if [ "$full" = 1 ]; then
    log "second boot with a changed zeppelin.toml"
    guest sudo systemctl poweroff || true
    for _ in $(seq 300); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$qemu_pid" 2>/dev/null && die "the guest did not power off within 5 minutes"
    write_config "2 gwei"
    t0=$(date +%s)
    boot_qemu "$work/serial2.log"
    wait_serial "$work/serial2.log" 'zeppelin-image: zeppelin.toml applied' 900 >/dev/null
    wait_serial "$work/serial2.log" "zeppelin-image: worker address $address" 1800 >/dev/null
    # The daemon sees its new terms and updates its registration.
    for _ in $(seq 300); do [ "$(price_on_chain)" = 2000000000 ] && break; sleep 2; done
    [ "$(price_on_chain)" = 2000000000 ] || die "the price on chain is $(price_on_chain) wei/s, not the new 2 gwei"
    t_second=$(($(date +%s) - t0))
    wait_ssh
    # (ssh joins its arguments into one remote command line: the pattern is quoted for that shell.)
    guest "grep -qx 'price_per_second = \"2 gwei\"' /etc/zeppelin/zeppelin.toml" ||
        die "the changed zeppelin.toml was not applied: $(guest grep price_per_second /etc/zeppelin/zeppelin.toml)"
    [ "$(guest hostname)" = "$host" ] || die "the hostname changed on the second boot"
    for _ in $(seq 60); do [ "$(guest systemctl is-active zeppelin.service)" = active ] && break; sleep 5; done
    [ "$(guest systemctl is-active zeppelin.service)" = active ] || die "zeppelin.service is not active after the second boot"
    ok "second boot: the changed zeppelin.toml applied (2 gwei on chain), same key ($address) and hostname, service active"
    log "figure: second boot, qemu start to the new price on chain $t_second s"
    guest sudo systemctl poweroff || true
fi
kill "$qemu_pid" 2>/dev/null || true
rm -f "$disk"

if [ "$full" = 1 ]; then
    if [ -z "$image_armhf" ]; then
        [ -n "$deb_armhf" ] || deb_armhf=$(newest_deb armhf armv7-unknown-linux-gnueabihf)
        image_armhf=$(build armhf "$deb_armhf")
    fi
    [ -f "$image_armhf" ] || die "--image-armhf: $image_armhf: no such file"
    check_image armhf "$image_armhf"
fi
ok "all checks passed ($([ "$full" = 1 ] && echo full || echo reduced) form)"
