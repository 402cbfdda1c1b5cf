#!/usr/bin/env bash
# The README's main command: set everything up, build, and run `zeppelin dev`, the complete
# local marketplace on this machine. Extra arguments go to `zeppelin dev` (see --help).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# The local marketplace needs no ARM toolchain.
bash tools/setup.sh --no-cross
# shellcheck source=tools/env.sh
source tools/env.sh
echo "dev: building zeppelin (release)"
cargo build --locked --release --quiet
exec "${CARGO_TARGET_DIR:-target}/release/zeppelin" dev "$@"
