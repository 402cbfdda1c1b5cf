# shellcheck shell=bash
# Source this file to put the pinned developer tools on PATH (after tools/setup.sh installed them):
#   source tools/env.sh
# It adds anvil, forge and cast from tools/node_modules, and tells `zeppelin dev` and the tests
# which anvil to run.
zeppelin_tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for zeppelin_tool in anvil forge cast; do
    PATH="$zeppelin_tools/node_modules/@foundry-rs/$zeppelin_tool-linux-amd64/bin:$PATH"
done
export PATH
export ZEPPELIN_ANVIL="$zeppelin_tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
unset zeppelin_tool zeppelin_tools
