#!/usr/bin/env bash
# Build ./.venv-mindalle: min-dalle 0.4.11 (kuprel's PyTorch port of DALL·E mini/mega), the PyTorch speed
# peer that `python benchmarks/bench.py --sections mindalle` runs through benchmarks/min_dalle_runner.py.
# torch is pinned in the same pip command as min-dalle: its metadata asks for an unpinned torch, which would
# pull a multi-GB CUDA build instead of the CPU wheel ours uses (same torch, so the comparison is the code's).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_MINDALLE:-.venv-mindalle}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet "torch==${TORCH_VERSION:-2.13.0}" min-dalle==0.4.11
echo "min-dalle environment ready in $VENV"
