#!/usr/bin/env bash
# The main job on embedded defaults (no GPU, IPFS node or Filecoin node needed):
# builds comine and runs the quick co-mining benchmark suite into ./comine-report.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --locked
exec ./target/release/comine "${@:-transcode-demo}"
