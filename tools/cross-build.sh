#!/usr/bin/env bash
# tools/cross-build.sh - release build of Zeppelin for one target triple.
#
# Usage: tools/cross-build.sh <triple> [--run-version] [extra cargo build args...]
#   <triple>        aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf | x86_64-unknown-linux-gnu
#   --run-version   after the build, run `<binary> --version` (under qemu for ARM) and check
#                   that the output names the triple
#   extra args      passed to `cargo build --release --locked --target <triple>`, e.g.
#                   --manifest-path other/Cargo.toml, --features ..., -j 2
#
# ARM targets use the private Debian rustc-web toolchain that tools/setup-cross.sh installs from
# the packages pinned in tools/rust-cross.lock (run automatically if it is missing; it needs root
# the first time) and the Debian GNU cross linkers. x86_64 uses the normal cargo/rustc.
#
# Environment:
#   CROSS_BIN         binary name (default: zeppelin)
#   ZEPPELIN_SRC_DIR  crate to build when no --manifest-path is given (default: the repo root)
#   ZEPPELIN_CACHE    toolchain cache root, as for setup-cross.sh
#   CARGO_TARGET_DIR  respected, as by cargo
#   CARGO             cargo to run (default: cargo)
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TOOLS_DIR/.." && pwd)
CARGO=${CARGO:-cargo}
BIN_NAME=${CROSS_BIN:-zeppelin}
TOOLCHAIN="${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross/current"

die() { printf 'cross-build: ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf 'cross-build: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
TRIPLE=$1; shift

RUN_VERSION=0
MANIFEST=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --run-version) RUN_VERSION=1 ;;
    --manifest-path) [[ $# -ge 2 ]] || die "--manifest-path needs a value"
                     MANIFEST=$2; ARGS+=("$1" "$2"); shift ;;
    --manifest-path=*) MANIFEST=${1#--manifest-path=}; ARGS+=("$1") ;;
    --target|--target=*) die "give the target as the first argument, not --target" ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

cd "$REPO_ROOT"
if [[ -z $MANIFEST && -n ${ZEPPELIN_SRC_DIR:-} ]]; then
  MANIFEST="$ZEPPELIN_SRC_DIR/Cargo.toml"
  ARGS=(--manifest-path "$MANIFEST" "${ARGS[@]}")
fi
MANIFEST=${MANIFEST:-$REPO_ROOT/Cargo.toml}
[[ -f $MANIFEST ]] || die "no Cargo.toml at $MANIFEST (set ZEPPELIN_SRC_DIR or pass --manifest-path)"

QEMU=() # command prefix to run a target binary on this machine
case "$TRIPLE" in
  aarch64-unknown-linux-gnu)     GNU=aarch64-linux-gnu;   QEMU=(qemu-aarch64-static -L /usr/aarch64-linux-gnu) ;;
  armv7-unknown-linux-gnueabihf) GNU=arm-linux-gnueabihf; QEMU=(qemu-arm-static -L /usr/arm-linux-gnueabihf) ;;
  x86_64-unknown-linux-gnu)      GNU="" ;;
  *) die "unsupported triple '$TRIPLE' (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu)" ;;
esac

if [[ -n $GNU ]]; then
  # Instant when the toolchain is in place (no network, no root); installs it otherwise.
  if ! "$TOOLS_DIR/setup-cross.sh"; then
    die "the cross toolchain is not ready; tools/setup-cross.sh failed (see its message above)"
  fi
  RUSTC_WRAPPER_PATH="$TOOLCHAIN/bin/rustc"
  [[ -x $RUSTC_WRAPPER_PATH ]] || die "no rustc wrapper at $RUSTC_WRAPPER_PATH"
  export RUSTC="$RUSTC_WRAPPER_PATH"
  UPPER=$(tr 'a-z-' 'A-Z_' <<<"$TRIPLE")
  LOWER=${TRIPLE//-/_}
  export "CARGO_TARGET_${UPPER}_LINKER=$GNU-gcc"
  export "CC_${LOWER}=$GNU-gcc" "CXX_${LOWER}=$GNU-g++" "AR_${LOWER}=$GNU-ar"
  log "RUSTC=$RUSTC ($("$RUSTC" -V)), linker $GNU-gcc"
fi

log "$CARGO build --release --locked --target $TRIPLE ${ARGS[*]}"
start=$SECONDS
"$CARGO" build --release --locked --target "$TRIPLE" "${ARGS[@]}"
log "build took $((SECONDS - start)) s"

# Where did it go? CARGO_TARGET_DIR if set, else what cargo says (workspaces, .cargo/config).
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
  TARGET_DIR=$CARGO_TARGET_DIR
else
  TARGET_DIR=$("$CARGO" metadata --format-version 1 --no-deps --manifest-path "$MANIFEST" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  TARGET_DIR=${TARGET_DIR:-$(dirname "$MANIFEST")/target}
fi
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/$TRIPLE/release/$BIN_NAME"
[[ -x $BIN ]] || die "build finished but $BIN is missing (set CROSS_BIN to the binary name)"

if [[ $RUN_VERSION == 1 ]]; then
  out=$("${QEMU[@]}" "$BIN" --version 2>&1) || die "'${QEMU[*]} $BIN --version' failed: $out"
  log "$BIN_NAME --version: $out"
  grep -qF -- "$TRIPLE" <<<"$out" || die "--version output does not mention $TRIPLE"
fi
echo "$BIN"
