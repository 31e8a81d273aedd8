#!/usr/bin/env bash
# Run the XLA tests (training, precision, the divergence guard, encoding, sampling) in .venv-xla (built by
# scripts/xla_env.sh) on torch-xla's CPU device.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_XLA:-.venv-xla}"
PJRT_DEVICE=CPU HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest tests/test_xla.py tests/test_xla_precision.py \
    tests/test_divergence_xla.py tests/test_encode_xla.py tests/test_sampling.py -q -rs "$@"
