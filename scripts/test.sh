#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing (FFmpeg -dev
# libraries, clang, the ffmpeg CLI, protoc, Chromium for the report rendering check, Go for
# building Kubo, Node.js/npm for anvil, PostgreSQL), builds Kubo once into ~/.cache/comine (reused
# afterwards), installs anvil there too, starts a real Kubo node offline, a real anvil and a real
# PostgreSQL on loopback, runs every test, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

# The servers are started and stopped by PID even when tests fail; tests read COMINE_TEST_IPFS_API
# (and start private nodes with the same script where they kill one), COMINE_TEST_ANVIL /
# COMINE_TEST_ANVIL_RPC (anvil from npm, cached in ~/.cache/comine/) and COMINE_TEST_PG.
scripts/pg-test-node.sh run scripts/anvil-test-node.sh run scripts/kubo-test-node.sh run cargo test --locked --no-fail-fast "$@"
