#!/usr/bin/env bash
# The main job on embedded defaults (no GPU, IPFS node or Filecoin node needed): builds comine
# and runs the quick co-mining benchmark suite — idle, real CPU sealing (8 MiB sectors),
# live transcoding streams, and both combined — writing report.{json,html,md} under
# ./comine-report/. Extra arguments go to `comine bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --locked
out="comine-report/$(date -u +%Y%m%dT%H%M%SZ)"
./target/release/comine bench --out "$out" "$@"
echo "report: $out/report.html"
