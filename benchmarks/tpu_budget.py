"""The 2021 recipe's budget on a TPU v3-8, on paper: counted FLOPs of one training sample of
`model=dalle_mini_2021` at `+experiment=tpu`'s shapes (128 text tokens, 256 image codes), a v3-8's published
bf16 peak, and the samples per second and days that 30 / 40 / 50% MFU would give.

    python benchmarks/tpu_budget.py [--samples 15000000] [--epochs 6]

A projection, not a measurement: no TPU has run this code. The FLOPs are counted by
torch.utils.flop_counter over one forward and backward pass of the real network on the meta device (no
weights allocated), so attention's own matmuls are in, not only 6 × parameters × tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.model import DalleBart

# Cloud TPU's published v3 figure: 123 bf16 TFLOP/s per chip, 4 chips (8 cores) on a v3-8
V3_8_PEAK = 4 * 123e12
SEED_CLAIM = "about 3 days, $200"  # the 2021 report's words for its run on one v3-8


def recipe_config() -> DalleBartConfig:
    model = OmegaConf.load(Path(CONFIG_DIR) / "model" / "dalle_mini_2021.yaml").net.config
    return DalleBartConfig(**{k: v for k, v in OmegaConf.to_container(model).items() if k != "_target_"})


def flops_per_sample(config: DalleBartConfig) -> tuple[int, int]:
    """(counted, 6 × parameters × tokens) FLOPs of one sample's forward and backward."""
    with torch.device("meta"):
        net = DalleBart(config)
        ids = torch.zeros(1, config.max_text_length, dtype=torch.long)
        mask = torch.ones(1, config.max_text_length, dtype=torch.long)
        labels = torch.zeros(1, config.image_length, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        net.loss(ids, mask, labels).backward()
    enc = sum(p.numel() for p in net.encoder.parameters())
    dec = sum(p.numel() for p in net.decoder.parameters())
    return counter.get_total_flops(), 6 * (enc * config.max_text_length + dec * config.image_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=15_000_000, help="pictures in the data set")
    parser.add_argument("--epochs", type=int, default=6, help="the recipe's trainer.max_epochs")
    args = parser.parse_args()
    counted, estimate = flops_per_sample(recipe_config())
    print(f"one sample, forward + backward: {counted / 1e9:.1f} GFLOP counted "
          f"({estimate / 1e9:.1f} by 6 x parameters x tokens); v3-8 bf16 peak {V3_8_PEAK / 1e12:.0f} TFLOP/s")
    print(f"\nA projection (no TPU has run it): {args.samples:,} pictures x {args.epochs} epochs\n")
    print("| MFU | samples/s | days per epoch | days for the run |")
    print("|---|---|---|---|")
    for mfu in (0.3, 0.4, 0.5):
        rate = mfu * V3_8_PEAK / counted
        day = args.samples / rate / 86400
        print(f"| {mfu:.0%} | {rate:,.0f} | {day:.2f} | {day * args.epochs:.1f} |")
    print(f"\nThe 2021 report: {SEED_CLAIM} on one v3-8.")


if __name__ == "__main__":
    main()
