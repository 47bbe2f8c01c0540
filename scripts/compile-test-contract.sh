#!/usr/bin/env bash
# Regenerates tests/contracts/LivepeerEarningsDouble.json (ABI + creation bytecode) from the
# .sol next to it with npm solc 0.8.37 (solc-js, offline once installed). The output is
# committed, so tests and CI never compile Solidity; run this only after editing the contract.
set -euo pipefail
VERSION="0.8.37"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/comine/solc-$VERSION"
SRC="$ROOT/tests/contracts/LivepeerEarningsDouble.sol"
OUT="$ROOT/tests/contracts/LivepeerEarningsDouble.json"

command -v npm >/dev/null || { echo "compile-test-contract: npm not found" >&2; exit 1; }
if [[ ! -f "$CACHE/node_modules/solc/package.json" ]] || ! grep -q "\"version\": \"$VERSION\"" "$CACHE/node_modules/solc/package.json"; then
  mkdir -p "$CACHE"
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$CACHE" "solc@$VERSION"
fi

NODE_PATH="$CACHE/node_modules" node - "$SRC" "$OUT" "$VERSION" <<'JS'
const fs = require("fs");
const solc = require("solc");
const [src, out, version] = process.argv.slice(2);
if (!solc.version().startsWith(version)) {
  console.error(`compile-test-contract: solc ${solc.version()} is not ${version}`);
  process.exit(1);
}
const input = {
  language: "Solidity",
  sources: { "LivepeerEarningsDouble.sol": { content: fs.readFileSync(src, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const result = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (result.errors || []).filter((e) => e.severity === "error");
for (const e of result.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);
const c = result.contracts["LivepeerEarningsDouble.sol"].LivepeerEarningsDouble;
fs.writeFileSync(out, JSON.stringify({
  contractName: "LivepeerEarningsDouble",
  compiler: `solc ${solc.version()}`,
  settings: { optimizer: { enabled: true, runs: 200 }, evmVersion: "cancun" },
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
}, null, 2) + "\n");
console.error(`wrote ${out} (${c.evm.bytecode.object.length / 2} bytes of bytecode)`);
JS
