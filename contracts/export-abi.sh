#!/usr/bin/env bash
# Writes contracts/abi/<Name>.json for every deployable contract in src/: the subset of the
# Foundry artifact that alloy's `sol!` macro reads ({"abi", "bytecode": {"object"},
# "deployedBytecode": {"object"}}), keys sorted, two-space indented, so the Rust bindings are
# built from committed files.
#   export-abi.sh          regenerate contracts/abi/
#   export-abi.sh --check  regenerate into a temporary directory and fail if contracts/abi/
#                          differs (CI: the committed bindings input matches the sources)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v forge >/dev/null 2>&1; then
  export PATH="$here/../tools/node_modules/@foundry-rs/forge-linux-amd64/bin:$PATH"
fi

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

cd "$here"
forge build --offline >/dev/null

dest="$here/abi"
if $check; then
  dest="$(mktemp -d)"
  trap 'rm -rf "$dest"' EXIT
fi
mkdir -p "$dest"

node - "$here/out" "$dest" <<'JS'
'use strict';
const fs = require('fs');
const path = require('path');
const [outDir, dest] = process.argv.slice(2);

// Every artifact whose compilation target is a file under src/.
const found = [];
for (const dir of fs.readdirSync(outDir)) {
  const full = path.join(outDir, dir);
  if (!fs.statSync(full).isDirectory()) continue;
  for (const file of fs.readdirSync(full)) {
    if (!file.endsWith('.json')) continue;
    const art = JSON.parse(fs.readFileSync(path.join(full, file), 'utf8'));
    const target = art.metadata && art.metadata.settings && art.metadata.settings.compilationTarget;
    if (!target) continue;
    const [source, name] = Object.entries(target)[0];
    if (!source.startsWith('src/')) continue;
    const code = art.bytecode && art.bytecode.object;
    const runtime = art.deployedBytecode && art.deployedBytecode.object;
    if (!code || code === '0x') continue; // interfaces, abstract contracts
    if (/^0x73[0]{40}3014/.test(runtime)) continue; // libraries: linked in, never deployed
    found.push({name, art});
  }
}
if (found.length === 0) {
  console.error('export-abi: no deployable contract found under src/');
  process.exit(1);
}

function sorted(v) {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]));
  }
  return v;
}

for (const {name, art} of found) {
  const subset = {
    abi: art.abi,
    bytecode: {object: art.bytecode.object},
    deployedBytecode: {object: art.deployedBytecode.object},
  };
  fs.writeFileSync(path.join(dest, `${name}.json`), JSON.stringify(sorted(subset), null, 2) + '\n');
}
console.log(found.map((f) => f.name).sort().join(' '));
JS

if $check; then
  if ! diff -r "$here/abi" "$dest" >/dev/null 2>&1; then
    echo "export-abi: contracts/abi/ does not match the compiled contracts." >&2
    diff -rq "$here/abi" "$dest" >&2 || true
    echo "Run contracts/export-abi.sh and commit contracts/abi/." >&2
    exit 1
  fi
  echo "export-abi: contracts/abi/ is up to date"
fi
