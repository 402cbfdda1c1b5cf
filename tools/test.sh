#!/usr/bin/env bash
# The whole test suite, set-up included: the README's test command, and what CI runs.
#
#   tools/test.sh            everything
#   tools/test.sh --no-cross skip the ARM release builds, the packages and the Pi image
#                            (quicker while developing)
#   tools/test.sh --no-image skip the Raspberry Pi image's acceptance (the image build and boot)
#
# Each step prints its name and time; the last line counts the steps that passed and failed.
# The suite stops at the first failing step.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

cross=1 image=1
for arg in "$@"; do
    case "$arg" in
        --no-cross) cross=0 ;;
        --no-image) image=0 ;;
        *)
            echo "test: unknown option '$arg' (--no-cross, --no-image)" >&2
            exit 2
            ;;
    esac
done

setup_args=()
[ "$cross" = 1 ] || setup_args+=(--no-cross)
bash tools/setup.sh "${setup_args[@]}"
# shellcheck source=tools/env.sh
source tools/env.sh

passed=0
step() {
    local name=$1
    shift
    local start=$SECONDS
    printf '\n==> %s\n' "$name"
    if "$@"; then
        passed=$((passed + 1))
        printf '<== %s: ok (%d s)\n' "$name" $((SECONDS - start))
    else
        local status=$?
        printf '<== %s: FAILED (exit %d, %d s)\n' "$name" "$status" $((SECONDS - start))
        printf '\nsuite: %d passed, 1 failed\n' "$passed"
        exit 1
    fi
}

no_aws_lc() {
    # aws-lc-rs does not cross-build for armv7: the graph must not contain it at all.
    if cargo tree --locked -i aws-lc-sys --target all >/dev/null 2>&1; then
        echo "aws-lc-sys is in the dependency graph:"
        cargo tree --locked -i aws-lc-sys --target all
        return 1
    fi
    echo "cargo tree -i aws-lc-sys: empty"
}

forge_in_contracts() { (cd contracts && forge "$@"); }

cross_release() {
    local triple=$1 expect=$2
    bash tools/cross-build.sh "$triple" --run-version
    local bin="${CARGO_TARGET_DIR:-target}/$triple/release/zeppelin"
    local kind
    kind=$(file -b "$bin")
    echo "file: $kind"
    case "$kind" in
        *"$expect"*) ;;
        *)
            echo "expected '$expect' in the file type of $bin"
            return 1
            ;;
    esac
}

shell_scripts() {
    shellcheck --severity=warning tools/*.sh .ci/run contracts/*.sh image-builder/*.sh \
        image-builder/overlay/usr/lib/zeppelin-image/boot-config \
        packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm
    echo "shellcheck: no warnings"
}

step "rustfmt" cargo fmt --all --check
step "shell scripts (shellcheck, warnings denied)" shell_scripts
step "clippy (warnings denied)" cargo clippy --locked --all-targets -- -D warnings
step "rust tests (unit and integration: real anvil)" cargo test --locked
step "no aws-lc in the dependency graph" no_aws_lc
step "forge fmt" forge_in_contracts fmt --check
step "forge tests" forge_in_contracts test --offline
if [ -f contracts/export-abi.sh ]; then
    step "Rust bindings match the compiled contracts" bash contracts/export-abi.sh --check
fi
step "release build x86_64" cargo build --locked --release
if [ "$cross" = 1 ]; then
    step "release build aarch64, run under qemu" cross_release aarch64-unknown-linux-gnu "ARM aarch64"
    step "release build armv7, run under qemu" cross_release armv7-unknown-linux-gnueabihf "ARM, EABI5"
    step "Debian packages amd64, arm64, armhf (cargo deb)" bash tools/package.sh all
    step "Debian packages: contents, architectures, lintian, systemd-analyze" bash tools/deb-test.sh inspect
    step "Debian packages: install, upgrade, remove, purge in Debian 12" bash tools/deb-test.sh dpkg
    step "Debian packages: systemd as PID 1 (READY, STATUS, stop, watchdog)" bash tools/deb-test.sh systemd
    if [ "$image" = 1 ]; then
        # The reduced acceptance (image-builder/acceptance.sh --full adds the second boot and
        # the armhf image); xz -1 because the file is only booted here, not shipped.
        step "Raspberry Pi image: arm64 built and inspected, booted under qemu to WorkerRegistered" \
            bash image-builder/acceptance.sh --xz-level 1
    fi
fi

printf '\ntotal time: %d s\n' "$SECONDS"
printf 'suite: %d passed, 0 failed\n' "$passed"
