#!/usr/bin/env bash
# Fill ./.whl (git-ignored) with the wheels benchmarks/gpu_run.sh installs on the GPU machine: what the
# package, its CUDA tests and the min-dalle comparison need beyond that machine's image (torch 2.11,
# Lightning, transformers, tokenizers, huggingface_hub, timm, einops, pyarrow, ... are there; see
# the device tool's KINDS.md). Python 3.12, x86-64; no dependencies resolved (each one needed is named here),
# one version of each. antlr4-python3-runtime 4.9.3 (Hydra's parser) and min-dalle 0.4.11 are published as
# source only: both are pure Python, so they are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
rm -rf .whl && mkdir -p .whl
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 ftfy==6.3.1 wcwidth==0.9.4 emoji==2.16.0 unidecode==1.4.0
        open-clip-torch==3.3.0 taming-transformers-rom1504==0.0.6)
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
$PIP wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3 min-dalle==0.4.11
ls -l .whl && du -sh .whl
