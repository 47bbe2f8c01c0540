#!/usr/bin/env bash
# Installs what comine needs, only when it is missing. Safe to run again.
#
#   scripts/setup.sh          build + run deps: FFmpeg -dev libs, clang/libclang,
#                             pkg-config, protoc, the ffmpeg CLI, a Rust toolchain
#   scripts/setup.sh --test   also what the test suite needs: Chromium (report rendering
#                             checks), Node.js/npm (npm-installed test tools), curl +
#                             unzip when there is no Go (scripts/kubo-test-node.sh then
#                             fetches the Go toolchain from the module proxy to build Kubo),
#                             PostgreSQL (the Curio HarmonyDB test server, scripts/pg-test-node.sh)
#                             and the AI worker's runtime and test model (scripts/ai-setup.sh)
#   scripts/setup.sh --ai     the AI worker's ONNX Runtime and test model (scripts/ai-setup.sh)
set -euo pipefail

want_test=0 want_ai=0
[[ "${1:-}" == "--test" ]] && want_test=1 && want_ai=1
[[ "${1:-}" == "--ai" ]] && want_ai=1

pkgs=(pkg-config clang libclang-dev ffmpeg protobuf-compiler
      libavcodec-dev libavformat-dev libavfilter-dev libavdevice-dev
      libavutil-dev libswscale-dev libswresample-dev)
if (( want_test )); then
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  command -v pg_config >/dev/null 2>&1 || ls -d /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || pkgs+=(postgresql)
  if ! command -v go >/dev/null 2>&1; then
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)
    command -v unzip >/dev/null 2>&1 || pkgs+=(unzip)
  fi
fi

# scripts/ai-setup.sh makes a venv for the onnxruntime wheel, the converter and the tests.
if (( want_ai )); then
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3 python3-venv python3-pip)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# nodejs/npm may come from NodeSource rather than Debian; the commands are what count.
if (( ${#missing[@]} )); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [[ -x "$HOME/.cargo/bin/cargo" ]] || {
    # Debian's own cargo is too old for this crate's dependencies; rustup it is.
    echo "setup: installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  }
  export PATH="$HOME/.cargo/bin:$PATH"
fi

if (( want_ai )); then
  # Runtime library, Python venv and the converted model, cached outside the clone.
  bash "$(dirname "${BASH_SOURCE[0]}")/ai-setup.sh"
fi
