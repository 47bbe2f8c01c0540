#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing (FFmpeg -dev
# libraries, clang, the ffmpeg CLI, protoc, Node.js for the js-ipfs test node and anvil, Chromium
# for the report rendering check), starts a real IPFS node and a real anvil on loopback, runs every
# test, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

# The nodes are started by PID and stopped even when tests fail; tests read COMINE_TEST_IPFS_API
# and COMINE_TEST_ANVIL / COMINE_TEST_ANVIL_RPC (anvil from npm, cached in ~/.cache/comine/).
scripts/anvil-test-node.sh run scripts/ipfs-test-node.sh run cargo test --locked --no-fail-fast "$@"
