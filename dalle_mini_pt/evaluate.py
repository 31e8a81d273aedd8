"""Evaluate a trained text-to-image stack on the shape scenes: does the picture show what was asked?

    python -m dalle_mini_pt.evaluate --model DIR --vqgan DIR --clip DIR --out DIR [--prompts 32 --num-images 8]

For validation prompts (seen attribute combinations) and held-out prompts (combinations never trained on),
it generates N images per prompt, judges the first sample and the CLIP-reranked best of N with the
pixel judge of `data/shapes.py` (per attribute and all-correct), measures the VQGAN's reconstruction PSNR on
validation scenes, and writes `report.json`, `report.md` and one grid per split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .clip_scorer import ClipScorer
from .data.shapes import make_split
from .data.shapes import judge as judge_image
from .image_grid import caption_grid
from .model import DalleBart
from .pipeline import DalleMiniPipeline
from .vqgan import VQGAN

ATTRIBUTES = ("colour", "shape", "size", "position", "colour_and_shape", "all")


def _verdict(image, caption: str) -> dict[str, bool]:
    """The judge's verdict plus colour-and-shape, the attribute pair the targets are stated for."""
    verdict = judge_image(image, caption)
    return {**verdict, "colour_and_shape": verdict["colour"] and verdict["shape"]}


def psnr(vqgan: VQGAN, n: int = 64, seed: int = 123) -> float:
    """Mean reconstruction PSNR (dB) of encode → decode on validation scenes, pixels in [0, 1]."""
    _, images = make_split("validation", n, vqgan.config.resolution, seed)
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
    y = torch.cat([vqgan.decode(vqgan.encode(chunk)).cpu() for chunk in x.split(16)])
    mse = ((x - y) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _rates(verdicts: list[dict]) -> dict[str, float]:
    return {a: float(np.mean([v[a] for v in verdicts])) for a in ATTRIBUTES}


def evaluate_split(pipe: DalleMiniPipeline, clip: ClipScorer, split: str, n_prompts: int, num_images: int,
                   seed: int, sampling: dict):
    captions, _ = make_split(split, n_prompts, seed=seed)
    results = pipe(captions, num_images=num_images, seed=seed, **sampling)
    first, best, rows = [], [], []
    for r in results:  # the pipeline has no scorer, so images come in sampling order
        pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in r.images]) / 255
        order, _ = clip.rank(pixels, r.prompt)
        first.append(_verdict(r.images[0], r.prompt))
        best.append(_verdict(r.images[int(order[0])], r.prompt))
        rows.append([r.images[int(i)] for i in order])
    grid = caption_grid(rows[:8], [r.prompt for r in results[:8]], scale=2)
    return {"first_sample": _rates(first), "clip_best_of_n": _rates(best)}, grid


def markdown(report: dict) -> str:
    lines = [f"VQGAN reconstruction PSNR on validation scenes: **{report['vqgan_psnr_db']:.2f} dB**", "",
             "| split | selection | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---|" * len(ATTRIBUTES)]
    for split, sel in report["splits"].items():
        for name, rates in sel.items():
            lines.append(f"| {split} | {name} | " + " | ".join(f"{100 * rates[a]:.1f}%" for a in ATTRIBUTES) + " |")
    return "\n".join(lines) + "\n"


def evaluate(pipe: DalleMiniPipeline, clip: ClipScorer, out: Path, n_prompts: int = 32, num_images: int = 8,
             seed: int = 0, **sampling) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {"vqgan_psnr_db": psnr(pipe.vqgan), "num_images": num_images, "prompts_per_split": n_prompts,
              "sampling": sampling, "splits": {}}
    for split in ("validation", "heldout"):
        report["splits"][split], grid = evaluate_split(pipe, clip, split, n_prompts, num_images, seed, sampling)
        grid.save(out / f"{split}_grid.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="DalleBart directory (with its tokenizer)")
    p.add_argument("--vqgan", required=True, help="VQGAN directory")
    p.add_argument("--clip", required=True, help="directory written by ClipScorer.save")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--condition-scale", type=float, default=3.0)
    args = p.parse_args(argv)
    from .hub import load_tokenizer

    model = DalleBart.from_pretrained(args.model)
    pipe = DalleMiniPipeline(model, load_tokenizer(args.model), VQGAN.from_pretrained(args.vqgan))
    report = evaluate(pipe, ClipScorer.load(args.clip), args.out, args.prompts, args.num_images, args.seed,
                      top_k=args.top_k, temperature=args.temperature, condition_scale=args.condition_scale)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
