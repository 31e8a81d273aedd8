#!/usr/bin/env bash
# Build ./.venv-xla: dalle_mini_pt on torch 2.9.0 + torch-xla 2.9.0, for tests/test_xla.py on the XLA CPU
# device (PJRT_DEVICE=CPU). torch_xla 2.9 loads only on exactly torch 2.9.0, so the pin goes in the same pip
# command as everything else (see install.sh). libtpu (the [tpu] extra) is not needed on CPU; on a TPU VM
# install ".[tpu]" instead. About 4 GB to download and 7 GB installed (the PyPI torch 2.9.0 wheel is the CUDA
# build and needs its nvidia-* wheels even to import).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_XLA:-.venv-xla}"
PYTHON="${PYTHON:-python3.11}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet "torch==2.9.0" "torch-xla==2.9.0" -e ".[clip,vqgan,dev]"
"$VENV/bin/pip" install --quiet --no-deps "taming-transformers-rom1504==0.0.6"
echo "torch-xla environment ready in $VENV"
