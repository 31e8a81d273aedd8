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
import contextlib
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..pipeline import DalleMiniPipeline, PromptImages
from ..png_metadata import png_bytes
from .jobs import BadRequest, Batcher, ServerSettings, decode_image


class GenerateRequest(BaseModel):
    prompts: Optional[list[str]] = None
    prompt: Optional[str] = None
    options: dict = {}
    init_image: Optional[str] = None
    keep_rows: int = 0


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
