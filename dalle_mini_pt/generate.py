"""Command line: prompts in, one PNG grid per prompt out, CLIP scores printed.

    python -m dalle_mini_pt.generate "a red square" "two blue circles" --pipeline runs/shapes/pipeline
    python -m dalle_mini_pt.generate "a red bus" --num-images 8 --out grid.png \\
        --model dalle-mini/dalle-mini --vqgan dalle-mini/vqgan_imagenet_f16_16384 --clip ViT-B-32:openai

`--pipeline` is a directory or hub repo saved by `DalleMiniPipeline.save_pretrained` (its own sampling
defaults apply). Or components: `--model` is a hub name or directory (ours or the reference's), or a
Lightning `.ckpt` (then `--tokenizer` says where its tokenizer is); `--vqgan` a hub name or directory, a
`.safetensors` file, or a taming `.ckpt`; `--clip` `NAME:TAG` (open_clip), a saved scorer, a Hydra yaml
such as `conf/clip/tiny.yaml`, or `none`. Each sampling option has a flag (`--top-k`, …).

Exit status: 0 when every grid is written; 2 for a bad command line, before any model loads (an option out
of range, a prompt that is not valid text, an output that cannot be written); 1 when loading or sampling
fails, with the reason on one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image

from . import cuda_graph
from .generation_config import add_arguments, given_options
from .pipeline import DEFAULT_GENERATION, DalleMiniPipeline, PromptImages
from .png_metadata import save_png
from .request_checks import check_prompts


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """--pipeline, or the components --model, --vqgan, --clip (and --tokenizer); `load` reads them."""
    p.add_argument("--pipeline", default=None, help="a saved pipeline (directory or hub repo)")
    p.add_argument("--model", default=None)
    p.add_argument("--tokenizer", default=None, help="defaults to the tokenizer saved with the model")
    p.add_argument("--vqgan", default=None)
    p.add_argument("--clip", default="none")
    p.add_argument("--revision", default=None, help="hub revision of --pipeline or --model")
    p.add_argument("--vqgan-revision", default=None,
                   help="hub revision of --vqgan (default: the commit the reference pins for "
                        "dalle-mini/vqgan_imagenet_f16_16384 and flax-community/vqgan_f16_16384)")


def default_device() -> str:
    """The device a command line runs on when --device is not given: CUDA, else Apple's MPS, else the
    CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=default_device(),
                   help="cuda, mps, cpu, … (default: cuda if there is one, else mps, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def check_pipeline_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.pipeline is None) == (args.model is None) or (args.model is not None and args.vqgan is None):
        p.error("give --pipeline DIR_OR_REPO, or --model and --vqgan (and optionally --clip)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="+", help="one or more prompts ('' is the unconditional prompt)")
    add_pipeline_arguments(p)
    add_arguments(p, DEFAULT_GENERATION, "a saved --pipeline's own sampling settings replace these defaults")
    p.add_argument("--clip-top-n", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("grid.png"),
                   help="PNG path; with several prompts, NAME_0.png, NAME_1.png, ...")
    p.add_argument("--scale", type=int, default=1, help="enlarge small images this many times in the grid")
    p.add_argument("--save-each", action="store_true",
                   help="also write each image, best first, as NAME-1.png, NAME-2.png, ... with its prompt, "
                        "seed and settings in PNG text chunks")
    p.add_argument("--progressive", action="store_true",
                   help="also write the grid as it is drawn, one code row at a time: NAME-partial-016.png, "
                        "... (the number: codes sampled so far)")
    add_device_arguments(p)
    args = p.parse_args(argv)  # each sampling flag is checked here (add_arguments)
    check_pipeline_arguments(p, args)
    check_outputs(p, args)
    try:  # before any model is loaded; the flags meet the pipeline's defaults once, in the pipeline
        if args.step_mode in cuda_graph.MODES:
            cuda_graph.check_device(torch.device(args.device), args.step_mode)
        with warnings.catch_warnings():  # an empty prompt's warning comes once, from the pipeline
            warnings.simplefilter("ignore")
            check_prompts(args.prompts)
    except (TypeError, ValueError) as err:
        p.error(str(err))
    return args


def check_outputs(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse outputs that cannot be written before anything is loaded or sampled."""
    if args.scale < 1:
        p.error(f"--scale {args.scale} must be >= 1: it enlarges each image that many times in the grid")
    out = args.out
    if out.is_dir():
        p.error(f"--out {out} is a directory; name the grid file in it, e.g. --out {out / 'grid.png'}")
    formats = Image.registered_extensions()
    if formats.get(out.suffix.lower()) not in Image.SAVE:
        p.error(f"--out {out}: {out.suffix or 'no suffix'} is not an image format PIL writes; end it in .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        p.error(f"--out {out}: its folder cannot be created ({err.strerror})")
    if not os.access(out.parent, os.W_OK):
        p.error(f"--out {out}: no permission to write in {out.parent}")


def load(args) -> DalleMiniPipeline:
    dtype = getattr(torch, getattr(args, "dtype", "float32"))
    device = getattr(args, "device", "cpu")
    if args.pipeline is not None:
        return DalleMiniPipeline.from_pretrained(args.pipeline, device=device, dtype=dtype,
                                                 revision=args.revision)
    return DalleMiniPipeline.from_components(args.model, args.vqgan, clip=args.clip, tokenizer=args.tokenizer,
                                             device=device, dtype=dtype, revision=args.revision,
                                             vqgan_revision=args.vqgan_revision)


def output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(n)]


def sample(pipe: DalleMiniPipeline, args, paths: list[Path]) -> list[PromptImages]:
    """The results; with --progressive, each partial grid is written beside its final one on the way."""
    options = given_options(args)  # by name: the pipeline merges them into its own defaults
    if not args.progressive:
        return pipe(args.prompts, clip_top_n=args.clip_top_n, progress=None, **options)
    for written, results in pipe.stream(args.prompts, clip_top_n=args.clip_top_n, progress=None, **options):
        if written < pipe.model.config.image_length:
            for result, path in zip(results, paths):
                result.grid(scale=args.scale).save(path.with_name(f"{path.stem}-partial-{written:03d}.png"))
    return results


def save_each(result: PromptImages, path: Path) -> list[Path]:
    return [save_png(image, path.with_name(f"{path.stem}-{i + 1}.png"), result.metadata(i))
            for i, image in enumerate(result.images)]


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    pipe = load(args)
    paths = output_paths(args.out, len(args.prompts))
    results = sample(pipe, args, paths)
    for result, path in zip(results, paths):
        result.grid(scale=args.scale).save(path)
        if args.save_each:
            save_each(result, path)
        scores = ", ".join(f"{s:.3f}" for s in result.scores) if result.scores is not None else "(no CLIP)"
        print(f"{path}\t{result.prompt!r}\tCLIP: {scores}")
    return paths


def cli(argv=None) -> int:
    """`main` as a process: what failed after the command line was accepted is one line and status 1."""
    try:
        main(argv)
    except (OSError, RuntimeError, TypeError, ValueError) as err:
        print(f"generate: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
