"""Command line: prompts in, one PNG grid per prompt out, CLIP scores printed.

    python -m dalle_mini_pt.generate "a red square" "two blue circles" --num-images 8 --out grid.png \\
        --model dalle-mini/dalle-mini --vqgan dalle-mini/vqgan_imagenet_f16_16384 --clip ViT-B-32:openai

`--model` is a hub name or directory in the native format, or a Lightning `.ckpt` (then `--tokenizer` says
where its tokenizer is). `--vqgan` is a hub name or directory, a `.safetensors` file, or a taming `.ckpt`.
`--clip` is `NAME:TAG` (open_clip), a Hydra yaml such as `conf/clip/tiny.yaml`, or `none`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dalle_mini_pt  # noqa: F401  (torchvision fix first)
import torch

from .pipeline import DalleMiniPipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="+", help="one or more prompts ('' is the unconditional prompt)")
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", default=None, help="defaults to the tokenizer saved with the model")
    p.add_argument("--vqgan", required=True)
    p.add_argument("--clip", default="none")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--condition-scale", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--clip-top-n", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("grid.png"),
                   help="PNG path; with several prompts, NAME_0.png, NAME_1.png, ...")
    p.add_argument("--scale", type=int, default=1, help="enlarge small images this many times in the grid")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p.parse_args(argv)


def output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(n)]


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    pipe = DalleMiniPipeline.from_pretrained(args.model, args.vqgan, clip=args.clip, tokenizer=args.tokenizer,
                                             device=args.device, dtype=getattr(torch, args.dtype))
    results = pipe(args.prompts, num_images=args.num_images, top_k=args.top_k, top_p=args.top_p,
                   temperature=args.temperature, condition_scale=args.condition_scale, seed=args.seed,
                   clip_top_n=args.clip_top_n, progress=None)
    paths = output_paths(args.out, len(results))
    for result, path in zip(results, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        result.grid(scale=args.scale).save(path)
        scores = ", ".join(f"{s:.3f}" for s in result.scores) if result.scores is not None else "(no CLIP)"
        print(f"{path}\t{result.prompt!r}\tCLIP: {scores}")
    return paths


if __name__ == "__main__":
    main()
