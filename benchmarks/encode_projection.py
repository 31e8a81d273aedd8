"""A projection, not a measurement: hours to encode N images (DALL·E mini's 15 M) on a TPU v3-8 host and on 8
GPUs, from the encoder's FLOPs per image as counted by torch.utils.flop_counter on one image, divided by
the accelerators' published peak rates.

    python benchmarks/encode_projection.py                     # imagenet_f16_16384 at 256 px, 15 M images

A run reaches only a part of the peak, and the host must decode and resize the images as fast
(benchmarks/encode_speed.py measures both on a machine): read the hours as the floor that compute sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dalle_mini_pt.config_dir import CONFIG_DIR  # noqa: E402

# (name, devices, peak FLOP/s of one device, the precision it is for, where the figure is from)
HARDWARE = [
    ("TPU v3-8 (one host)", 4, 123e12, "bf16 MXU pass", "cloud.google.com/tpu/docs/v3: 123 TFLOP/s a chip"),
    ("8x A100", 8, 156e12, "TF32 (cuDNN's default for fp32 convolutions)", "NVIDIA A100 datasheet, dense"),
    ("8x A100, TF32 off", 8, 19.5e12, "fp32", "NVIDIA A100 datasheet"),
    ("8x H100 SXM", 8, 494.7e12, "TF32", "NVIDIA H100 datasheet, dense"),
]


def encoder_flops(vqgan_name: str) -> tuple[float, dict]:
    """FLOPs of `VQGAN.encode` for one image (random weights: the count depends on shapes only)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="encode", overrides=[f"vqgan={vqgan_name}", "input.path=x",
                                                       "vqgan_weights=null"])
    vqgan = instantiate(cfg.vqgan).eval()
    r = vqgan.config.resolution
    with FlopCounterMode(display=False) as counter:
        vqgan.encode(torch.zeros(1, r, r, 3, dtype=torch.uint8))
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqgan", default="imagenet_f16_16384", help="a conf/vqgan/ name")
    parser.add_argument("--images", type=float, default=15e6)
    args = parser.parse_args(argv)
    flops, by_op = encoder_flops(args.vqgan)
    print(f"\nVQGAN {args.vqgan}: {flops / 1e9:.1f} GFLOP per image encoded (counted: "
          + ", ".join(f"{op} {n / 1e9:.2f}" for op, n in by_op.items()) + ")")
    print(f"PROJECTION for {args.images:,.0f} images ({args.images * flops:.3g} FLOP), at the peak rate:")
    print("| hardware | peak TFLOP/s (all devices) | precision | hours at peak | peak from |")
    print("|---|---|---|---|---|")
    for name, devices, peak, precision, source in HARDWARE:
        hours = args.images * flops / (devices * peak) / 3600
        print(f"| {name} | {devices * peak / 1e12:.0f} | {precision} | {hours:.2f} | {source} |")


if __name__ == "__main__":
    main()
