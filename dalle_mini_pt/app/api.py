"""The project's own HTTP API: `POST /api/generate` with every sampling option and image completion, and
`GET /health`, which answers from plain counters (no lock the batcher holds, no worker thread).

    curl -s localhost:7860/api/generate -H 'content-type: application/json' \\
         -d '{"prompts": ["a red circle"], "options": {"num_images": 4, "seed": 0}}'

A request is JSON: `prompts` (or one `prompt`), `options` (any `GenerationConfig` field: num_images, top_k,
top_p, min_p, temperature, condition_scale, seed), and for completion `init_image` (base64 PNG/JPEG/WebP,
resized and centre-cropped to the VQGAN's resolution as the data encoder does) with `keep_rows`. The
answer holds, per prompt, the images best first as base64 PNGs (what reproduces each in its text chunks)
with their CLIP scores, and the seed and settings used. A field it does not know is refused by name.
"""

from __future__ import annotations

import base64
import binascii
from typing import Optional

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ..pipeline import PromptImages
from ..png_metadata import png_bytes
from ..request_checks import ImageLimits, RequestTooLarge, read_init_image
from .http_errors import RequestError
from .jobs import Batcher
from .shutdown import Draining


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: Optional[list[str]] = None
    prompt: Optional[str] = None
    options: dict = {}
    init_image: Optional[str] = None
    keep_rows: int = 0


def image_bytes(text: str, limits: ImageLimits) -> bytes:
    """base64 text (or a data: URL) -> the file's bytes, its length bounded before decoding."""
    if len(text) > limits.max_bytes * 4 // 3 + 4:
        raise RequestTooLarge(f"init_image is over {limits.max_bytes} bytes")
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("init_image is not valid base64", param="init_image") from None


def result_json(result: PromptImages) -> dict:
    scores = result.scores or [None] * len(result.images)
    return {"prompt": result.prompt, "seed": result.seed, "settings": result.settings.to_dict(),
            "keep_rows": result.keep_rows,
            "images": [{"png": base64.b64encode(png_bytes(image, result.metadata(i))).decode(),
                        "score": scores[i], "sample": result.order[i]}
                       for i, image in enumerate(result.images)]}


def add_api(app: FastAPI, batcher: Batcher, draining: Draining, fields: dict[str, list[str]]) -> None:
    settings, resolution = batcher.settings, batcher.pipe.vqgan.config.resolution
    fields["/api/generate"] = list(GenerateRequest.model_fields)

    @app.get("/health")
    async def health():
        body = {"status": "shutting down" if draining.draining else "ok", "waiting": batcher.waiting,
                "running": batcher.running, "sampler_calls": batcher.sampler_calls,
                "jobs_done": batcher.jobs_done, "batch_images": batcher.batch_images,
                "max_queue": settings.max_queue}
        return JSONResponse(body, 503 if draining.draining else 200)

    @app.post("/api/generate")
    async def generate(body: GenerateRequest) -> dict:
        if body.prompts is not None and body.prompt is not None:
            raise RequestError("give `prompts` (a list) or `prompt`, not both", param="prompts")
        prompts = body.prompts if body.prompts is not None else body.prompt
        image = None
        if body.init_image is not None:
            data = image_bytes(body.init_image, settings.image)
            try:
                image = await run_in_threadpool(read_init_image, data, resolution, settings.image)
            except RequestTooLarge:
                raise
            except ValueError as e:
                raise RequestError(str(e), param="init_image") from None
        job = batcher.submit(prompts, body.options, init_image=image, keep_rows=body.keep_rows)
        results = await batcher.outcome(job)
        return await run_in_threadpool(lambda: {"results": [result_json(r) for r in results]})
