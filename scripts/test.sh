#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing,
# starts a real IPFS node on loopback for the storage tests, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

cargo test --locked --no-fail-fast "$@"
