#!/usr/bin/env bash
# Build ./.venv-ref: the reference implementation (dalle-mini 0.1.5 on JAX/Flax, CPU) that
# tests/test_parity.py compares against. Pins from issue 4: the newest set that still installs on Python 3.11
# and imports dalle-mini 0.1.5 (its code predates jax.sharding and transformers 4.26).
# dalle-mini itself goes in with --no-deps: its metadata asks for unpinned jax/flax/transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_REF:-.venv-ref}"
PYTHON="${PYTHON:-python3.11}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet \
  numpy==1.26.4 scipy==1.11.4 ml_dtypes==0.2.0 jax==0.4.13 jaxlib==0.4.13 flax==0.6.11 optax==0.2.1 \
  chex==0.1.82 transformers==4.25.1 tokenizers==0.13.3 huggingface_hub==0.36.2 \
  wandb einops unidecode ftfy emoji pillow
"$VENV/bin/pip" install --quiet --no-deps dalle-mini==0.1.5
echo "reference environment ready in $VENV"
