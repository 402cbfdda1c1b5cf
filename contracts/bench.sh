#!/usr/bin/env bash
# Prints the dispatcher's gas figures, one per line ("gas <what>: N"), and whether the
# buyContract goals are met. Figures are execution gas of each call with cold storage, without
# a transaction's 21,000 intrinsic gas and calldata. Run from anywhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/../tools/node_modules/@foundry-rs"
if ! command -v forge >/dev/null 2>&1; then
  export PATH="$tools/forge-linux-amd64/bin:$PATH"
fi
cd "$here"
out="$(FOUNDRY_PROFILE=bench forge test --offline -vv 2>&1)" || {
  printf '%s\n' "$out" >&2
  echo "bench.sh: the benchmark run failed" >&2
  exit 1
}
lines="$(printf '%s\n' "$out" | sed -n 's/^ *\(\(gas\|goal\) .*\)$/\1/p')"
if [ -z "$lines" ]; then
  printf '%s\n' "$out" >&2
  echo "bench.sh: no figures in the benchmark output" >&2
  exit 1
fi
printf '%s\n' "$lines"
