#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing (FFmpeg -dev
# libraries, clang, the ffmpeg CLI, protoc, Chromium for the report rendering check, Go for
# building Kubo), builds Kubo once into ~/.cache/comine (reused afterwards), starts a real Kubo
# node offline on loopback, runs every test, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

# The node is started and stopped by PID even when tests fail; tests read COMINE_TEST_IPFS_API
# (and start private nodes with the same script where they kill one).
scripts/kubo-test-node.sh run cargo test --locked --no-fail-fast "$@"
