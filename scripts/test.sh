#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing (FFmpeg -dev
# libraries, clang, the ffmpeg CLI, protoc, Node.js for the js-ipfs test node, Chromium for
# the report rendering check), starts a real IPFS node on loopback, runs every test, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

# The node is started by PID and stopped even when tests fail; tests read COMINE_TEST_IPFS_API.
scripts/ipfs-test-node.sh run cargo test --locked --no-fail-fast "$@"
