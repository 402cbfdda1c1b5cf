#!/usr/bin/env node
// A `solc` executable for forge, backed by solc-js from the pinned npm package.
//
// forge calls its solc as `solc --version` (to learn the version) and as
// `solc --standard-json [--allow-paths ..] [--base-path ..]` with Standard JSON on stdin.
// solc-js implements the same Standard JSON interface in WebAssembly, so this wrapper only
// translates the command line: no network, no native download.
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const args = process.argv.slice(2);

if (args.includes('--version') || args.includes('-v')) {
  // forge parses "Version: X.Y.Z+commit.HASH..." like the native binary prints it.
  const v = solc.version().replace(/\.Emscripten\.clang$/, '.Linux.g++');
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${v}\n`);
  process.exit(0);
}

if (!args.includes('--standard-json')) {
  process.stderr.write('this solc wrapper supports only --version and --standard-json\n');
  process.exit(2);
}

function optionValue(name) {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : null;
}
const basePath = optionValue('--base-path') || process.cwd();
const includePaths = [];
args.forEach((a, i) => { if (a === '--include-path' && args[i + 1]) includePaths.push(args[i + 1]); });

function findImports(importPath) {
  const candidates = [importPath, path.join(basePath, importPath)]
    .concat(includePaths.map((p) => path.join(p, importPath)));
  for (const candidate of candidates) {
    try {
      return { contents: fs.readFileSync(candidate, 'utf8') };
    } catch (_) { /* try the next root */ }
  }
  return { error: `file not found: ${importPath}` };
}

const input = fs.readFileSync(0, 'utf8');
process.stdout.write(solc.compile(input, { import: findImports }));
