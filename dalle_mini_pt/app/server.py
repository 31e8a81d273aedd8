"""The demo's server: a FastAPI app with the HTTP API (`POST /api/generate`, `GET /health`) and the Gradio UI
mounted at `/`, both feeding one `Batcher`.

    curl -s localhost:7860/api/generate -H 'content-type: application/json' \\
         -d '{"prompts": ["a red circle"], "options": {"num_images": 4, "seed": 0}}'

A request is JSON: `prompts` (or one `prompt`), `options` (any `GenerationConfig` field: num_images, top_k,
top_p, min_p, temperature, condition_scale, seed), and for completion `init_image` (base64 PNG/JPEG/WebP,
resized and centre-cropped to the VQGAN's resolution as the data encoder does) with `keep_rows`. The
answer holds, per prompt, the images best first as base64 PNGs (prompt, seed and settings in their text
chunks) with their CLIP scores, and the seed and settings used. A bad request gets a 4xx naming the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel

from ..data.image_sources import load_image
from ..pipeline import DalleMiniPipeline, PromptImages
from ..png_metadata import png_bytes
from .jobs import BadRequest, Batcher


@dataclass
class ServerSettings:
    batch_images: int = 16  # most images in one sampler call
    wait: float = 0.05  # seconds a job waits for others to merge with
    every: Optional[int] = -1  # sampling steps between partial images in the UI (-1: one code row)
    max_image_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096


class GenerateRequest(BaseModel):
    prompts: Optional[list[str]] = None
    prompt: Optional[str] = None
    options: dict = {}
    init_image: Optional[str] = None
    keep_rows: int = 0


def decode_image(data: Union[str, bytes], resolution: int, settings: ServerSettings) -> np.ndarray:
    """base64 text or raw bytes of an image -> the VQGAN's input, fitted as the data encoder fits images;
    `BadRequest` for what is too big or not an image."""
    if isinstance(data, str):
        if len(data) > settings.max_image_bytes * 4 // 3 + 4:
            raise BadRequest(f"init_image is over {settings.max_image_bytes} bytes", status=413)
        try:
            data = base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("init_image is not valid base64") from None
    if len(data) > settings.max_image_bytes:
        raise BadRequest(f"init_image is over {settings.max_image_bytes} bytes", status=413)
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only: the size before any pixel
            w, h = im.size
    except Exception:
        raise BadRequest("init_image is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
    if w * h > settings.max_image_pixels:
        raise BadRequest(f"init_image is {w}x{h}, over {settings.max_image_pixels} pixels", status=413)
    try:
        return load_image(data, resolution)
    except Exception as e:
        raise BadRequest(f"init_image could not be decoded ({e})") from None


def result_json(result: PromptImages) -> dict:
    scores = result.scores or [None] * len(result.images)
    return {"prompt": result.prompt, "seed": result.seed, "settings": result.settings.to_dict(),
            "keep_rows": result.keep_rows,
            "images": [{"png": base64.b64encode(png_bytes(image, result.metadata(i))).decode(),
                        "score": scores[i], "sample": result.order[i]}
                       for i, image in enumerate(result.images)]}


def add_api(app: FastAPI, batcher: Batcher, settings: ServerSettings) -> None:
    resolution = batcher.pipe.vqgan.config.resolution

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest):
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_image_bytes * 2:
            return JSONResponse({"detail": f"request body over {settings.max_image_bytes * 2} bytes"},
                                status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "waiting": batcher.waiting, "sampler_calls": batcher.sampler_calls,
                "jobs_done": batcher.jobs_done, "batch_images": batcher.batch_images}

    @app.post("/api/generate")
    async def generate(body: GenerateRequest) -> dict:
        if body.prompts is not None and body.prompt is not None:
            raise BadRequest("give `prompts` (a list) or `prompt`, not both")
        prompts = body.prompts if body.prompts is not None else body.prompt
        image = None
        if body.init_image is not None:
            image = await run_in_threadpool(decode_image, body.init_image, resolution, settings)
        job = batcher.submit(prompts, body.options, init_image=image, keep_rows=body.keep_rows)
        results = await run_in_threadpool(job.result)
        return {"results": [result_json(r) for r in results]}


def create_app(pipe: DalleMiniPipeline, settings: Optional[ServerSettings] = None,
               ui: bool = True) -> FastAPI:
    """The whole server; `ui=False` leaves the Gradio page out (the API alone)."""
    settings = settings or ServerSettings()
    batcher = Batcher(pipe, settings.batch_images, settings.wait, settings.every)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for close in app.state.on_close:
            close()

    app = FastAPI(title="dalle-mini-pt", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.batcher, app.state.on_close = batcher, [batcher.close]
    add_api(app, batcher, settings)
    if ui:
        from .ui import mount_ui  # gradio is imported only for the page

        app = mount_ui(app, batcher, settings)
    return app
