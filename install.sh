#!/usr/bin/env bash
# Create (or update) ./.venv with dalle_mini_pt and everything its tests and demo need, from the
# package registries alone. torch is pinned in the same pip command: without the pin, open-clip-torch's
# torchvision would pull a newer CUDA torch (several GB) instead of the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "torch==2.13.0" -e ".[clip,vqgan,demo,dev,sweep,hf]"
# taming's metadata pins Lightning-1.x-era packages it does not need for the modules we import
"$VENV/bin/pip" install --quiet --no-deps "taming-transformers-rom1504==0.0.6"
echo "installed into $VENV"
