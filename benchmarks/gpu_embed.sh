#!/usr/bin/env bash
# One prepared command for a machine with an NVIDIA GPU: generate a large synthetic slide, embed it
# with ResNet-50 (random weights, seed 0) end to end, and print patches/s against the bare model's
# forward pass on ready tensors (same model, batch and precision), measured in one run.
#
#   bash benchmarks/gpu_embed.sh                     # 50000 patches, batch 256, all cores
#   PATCHES=50000 BATCH=512 WORKERS=12 bash benchmarks/gpu_embed.sh
#   GPU_TEST=0 ...                                   # skip the CUDA-vs-CPU pytest afterwards
#
# Python: uses an interpreter whose torch already imports with CUDA ($PYTHON, then .venv/bin/python,
# then python3), so a machine without internet works if torch is there; the few pure-Python
# dependencies it lacks are pip-installed into a throwaway venv that sees the system's packages
# (--system-site-packages, so torch is not downloaded again). Without torch anywhere it creates
# .venv-gpu with `pip install -e .[embed]` (needs PyPI).
# Targets (issue 3): >= 3,000 patches/s end to end on one H100, >= 80% of the bare model's rate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PATCHES=${PATCHES:-50000}
BATCH=${BATCH:-256}
MODEL=${MODEL:-resnet50-random}
DEVICE=${DEVICE:-cuda}
WORKERS_ARG=()
if [[ -n "${WORKERS:-}" ]]; then WORKERS_ARG=(--workers "$WORKERS"); fi

has_torch() { "$1" -c 'import torch, torchvision' >/dev/null 2>&1; }
has_deps() {
  "$1" -c 'import numpy, h5py, PIL, tifffile, scipy, skimage, tqdm; import openslide' >/dev/null 2>&1 ||
    "$1" -c 'import numpy, h5py, PIL, tifffile, scipy, skimage, tqdm, tiffslide' >/dev/null 2>&1
}

PY=""
for cand in "${PYTHON:-}" "$ROOT/.venv/bin/python" "$ROOT/.venv-gpu/bin/python" python3 python; do
  [[ -z "$cand" ]] && continue
  command -v "$cand" >/dev/null 2>&1 || [[ -x "$cand" ]] || continue
  if has_torch "$cand"; then PY=$cand; break; fi
done

if [[ -z "$PY" ]]; then
  echo "no Python with torch found; creating .venv-gpu with pip install -e .[embed] (needs PyPI)" >&2
  python3 -m venv "$ROOT/.venv-gpu"
  "$ROOT/.venv-gpu/bin/python" -m pip install --quiet --upgrade pip
  "$ROOT/.venv-gpu/bin/python" -m pip install --quiet -e "$ROOT[embed]"
  PY="$ROOT/.venv-gpu/bin/python"
elif ! has_deps "$PY"; then
  echo "$PY has torch but lacks slide/HDF5 packages; adding them in .venv-gpu (system torch kept)" >&2
  "$PY" -m venv --system-site-packages "$ROOT/.venv-gpu"
  VPY="$ROOT/.venv-gpu/bin/python"
  # No torch in this list: the system's is used as it is, whatever its version.
  "$VPY" -m pip install --quiet numpy scipy h5py pillow tqdm tifffile imagecodecs scikit-image \
    openslide-python openslide-bin tiffslide ||
    echo "warning: pip install failed (offline?); trying with what is installed" >&2
  PY=$VPY
fi

export PYTHONPATH="$ROOT/server${PYTHONPATH:+:$PYTHONPATH}"
echo "python: $PY" >&2
"$PY" - <<'EOF'
import os, torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
      f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}, "
      f"cores: {os.cpu_count()}")
EOF
# The GPU-only correctness test (CUDA features match CPU ones), when pytest is at hand.
if [[ "${GPU_TEST:-1}" == "1" ]] && "$PY" -c 'import pytest' >/dev/null 2>&1; then
  "$PY" -m pytest -q -p no:cacheprovider -m gpu "$ROOT/tests/test_embed.py" || exit 1
fi

# The benchmark last: its last line is the JSON record (target, measured, holds).
"$PY" "$ROOT/benchmarks/bench_embed.py" --model "$MODEL" --patches "$PATCHES" \
  --batch-size "$BATCH" --device "$DEVICE" "${WORKERS_ARG[@]}" "$@"
