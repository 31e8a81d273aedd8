"""One tiny random DalleBart saved by the reference itself (dalle-mini 0.1.5, JAX/Flax), with the
architecture of conf/model/tiny.yaml: what the fine-tuning tests start from.

Runs in the reference environment (scripts/reference_env.sh), never in ours:
    .venv-ref/bin/python scripts/reference_checkpoint.py --out DIR [--max-shard-size 50KB]

DIR gets the reference's `save_pretrained` output: config.json + flax_model.msgpack, or, with
--max-shard-size, transformers' sharded layout (flax_model.msgpack.index.json + its
flax_model-0000k-of-n.msgpack shards).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# first: it sets the cheap XLA flags and patches jax for dalle-mini 0.1.5
from reference_outputs import random_params  # noqa: E402

# isort: split
import jax.numpy as jnp  # noqa: E402
from dalle_mini.model import DalleBart, DalleBartConfig  # noqa: E402

# conf/model/tiny.yaml
TINY = dict(encoder_vocab_size=512, image_vocab_size=32, image_length=256, max_text_length=16, d_model=64,
            encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, ln_positions="normformer", use_glu=True, use_bias=False,
            dropout=0.0, gradient_checkpointing=False, init_std=0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default=None,
                        help="e.g. 50KB: write transformers' sharded layout")
    args = parser.parse_args()
    model = DalleBart(DalleBartConfig(**TINY), dtype=jnp.float32, _do_init=False)
    params = random_params(model, args.seed)
    kwargs = {"max_shard_size": args.max_shard_size} if args.max_shard_size else {}
    model.save_pretrained(args.out, params=params, **kwargs)
    print(f"wrote {sorted(p.name for p in args.out.iterdir())} to {args.out}")


if __name__ == "__main__":
    main()
