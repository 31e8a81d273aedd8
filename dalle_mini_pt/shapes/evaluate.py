"""Evaluate a trained pipeline on the shape scenes: does the picture show what was asked?

    python -m dalle_mini_pt.shapes.evaluate --pipeline DIR --out DIR [--prompts 32 --num-images 8 ...]
    python -m dalle_mini_pt.shapes.evaluate --model DIR --vqgan DIR --clip DIR --out DIR

For validation prompts (seen attribute combinations) and held-out prompts (combinations never trained on),
it generates N images per prompt, judges the first sample and the CLIP-reranked best of N with the pixel
judge (`judge.py`; per attribute and all-correct), measures the VQGAN's reconstructions of validation and
held-out scenes (PSNR, and what the judge reads in them), and writes `report.json`, `report.md` and one
grid per split. Sampling starts from the pipeline's saved settings; each option has a flag.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..clip_scorer import ClipScorer
from ..generate import add_pipeline_arguments, check_pipeline_arguments, load
from ..generation_config import GenerationConfig, add_arguments, given_options, with_options
from ..image_grid import caption_grid, to_pil
from ..pipeline import DalleMiniPipeline
from ..vqgan import VQGAN
from .judge import judge as judge_image
from .scenes import make_split
from .vqgan_module import psnr

ATTRIBUTES = ("colour", "shape", "size", "position", "colour_and_shape", "all")
# for components loaded one by one: the embedded default's sampling (super-conditioning 3, best of 8)
EVALUATION = GenerationConfig(num_images=8, condition_scale=3.0, seed=0)


def _verdict(image, caption: str) -> dict[str, bool]:
    """The judge's verdict plus colour-and-shape, the attribute pair the targets are stated for."""
    verdict = judge_image(image, caption)
    return {**verdict, "colour_and_shape": verdict["colour"] and verdict["shape"]}


def reconstruction(vqgan: VQGAN, split: str, n: int = 64, seed: int = 123) -> dict[str, float]:
    """encode → decode of the split's scenes: the mean PSNR (dB), and how often the judge still reads the
    caption's colour and shape in the reconstruction (is the image tokenizer the limit on that split?)."""
    captions, images = make_split(split, n, vqgan.config.resolution, seed)
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
    y = torch.cat([vqgan.decode(vqgan.encode(chunk)).cpu() for chunk in x.split(16)])
    judged = [_verdict(im, c)["colour_and_shape"] for im, c in zip(to_pil(y), captions)]
    return {"psnr_db": float(psnr(x, y).mean()), "colour_and_shape": float(np.mean(judged))}


def _rates(verdicts: list[dict]) -> dict[str, float]:
    return {a: float(np.mean([v[a] for v in verdicts])) for a in ATTRIBUTES}


def evaluate_split(pipe: DalleMiniPipeline, clip: ClipScorer, split: str, n_prompts: int,
                   sampling: GenerationConfig):
    captions, _ = make_split(split, n_prompts, seed=sampling.seed or 0)
    results = pipe(captions, sampling, progress=None)
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
    held = report["vqgan_reconstruction"]["heldout"]
    lines = [f"VQGAN reconstruction PSNR on validation scenes: **{report['vqgan_psnr_db']:.2f} dB**; on "
             f"held-out scenes {held['psnr_db']:.2f} dB, where the judge reads colour and shape right in "
             f"{100 * held['colour_and_shape']:.1f}% of the reconstructions", "",
             "| split | selection | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---|" * len(ATTRIBUTES)]
    for split, sel in report["splits"].items():
        for name, rates in sel.items():
            lines.append(f"| {split} | {name} | "
                         + " | ".join(f"{100 * rates[a]:.1f}%" for a in ATTRIBUTES) + " |")
    return "\n".join(lines) + "\n"


def evaluate(pipe: DalleMiniPipeline, out: Path, n_prompts: int = 32,
             sampling: GenerationConfig = GenerationConfig()) -> dict:
    """`pipe`'s CLIP ranks its images; generation itself runs unranked, so the first sample is the
    sampler's."""
    if pipe.clip is None:
        raise ValueError("the evaluation ranks with the pipeline's CLIP, and this pipeline has none")
    out.mkdir(parents=True, exist_ok=True)
    unranked = DalleMiniPipeline(pipe.model, pipe.tokenizer, pipe.vqgan, normalizer=pipe.normalizer)
    recon = {split: reconstruction(pipe.vqgan, split) for split in ("validation", "heldout")}
    report = {"vqgan_psnr_db": recon["validation"]["psnr_db"], "vqgan_reconstruction": recon,
              "num_images": sampling.num_images, "prompts_per_split": n_prompts,
              "sampling": sampling.to_dict(), "splits": {}}
    for split in ("validation", "heldout"):
        report["splits"][split], grid = evaluate_split(unranked, pipe.clip, split, n_prompts, sampling)
        grid.save(out / f"{split}_grid.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.shapes.evaluate",
                                description=__doc__.split("\n\n")[0])
    add_pipeline_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=32, help="prompts per split")
    add_arguments(p, EVALUATION, "a saved --pipeline's sampling settings replace these defaults")
    args = p.parse_args(argv)
    check_pipeline_arguments(p, args)
    pipe = load(args)
    defaults = pipe.generation_config if args.pipeline else EVALUATION
    # the flags' one merge; a run without a seed anywhere takes 0, so that its report can be repeated
    sampling = with_options(defaults, {"seed": defaults.seed or 0, **given_options(args)})
    report = evaluate(pipe, args.out, args.prompts, sampling)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
