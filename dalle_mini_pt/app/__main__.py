"""python -m dalle_mini_pt.app: serve the demo page and the HTTP API for a saved pipeline.

With no --pipeline it serves the embedded default's trained pipeline (runs/shapes/pipeline) when it is
there, and otherwise says how to make it. Binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio

import dalle_mini_pt  # noqa: E402,F401  (torchvision fix first)

from ..generate import add_pipeline_arguments, load  # noqa: E402
from .jobs import ServerSettings  # noqa: E402

DEFAULT_PIPELINE = Path("runs/shapes/pipeline")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.app", description=__doc__.split("\n\n")[0])
    add_pipeline_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too (default: this)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--batch-images", type=int, default=ServerSettings.batch_images,
                   help="most images sampled in one call; requests arriving together are merged up to it")
    p.add_argument("--batch-wait", type=float, default=ServerSettings.wait,
                   help="seconds a request waits for others to merge with")
    p.add_argument("--stream-every", type=int, default=-1,
                   help="sampling steps between the page's partial images (default: one row of codes)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    if args.model is not None and args.vqgan is None:
        p.error("--model needs --vqgan (and optionally --clip); or give --pipeline")
    if args.pipeline is None and args.model is None:
        if not (DEFAULT_PIPELINE / "model_index.json").exists():
            p.exit(2, f"no --pipeline given and no trained pipeline in {DEFAULT_PIPELINE}: make it with "
                      "`python -m dalle_mini_pt.shapes_pipeline` (about 11 minutes on 2 CPU cores), or pass "
                      "--pipeline DIR_OR_REPO\n")
        args.pipeline = str(DEFAULT_PIPELINE)
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> None:
    args = parse_args(argv)
    import uvicorn

    from .server import create_app

    pipe = load(args)
    app = create_app(pipe, ServerSettings(batch_images=args.batch_images, wait=args.batch_wait,
                                          every=args.stream_every))
    print(f"dalle-mini-pt demo on http://{args.host}:{args.port}/ (API: POST /api/generate, GET /health)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
