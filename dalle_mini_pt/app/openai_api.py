"""The OpenAI Images API, which the official `openai` SDKs, LangChain and chat front-ends with a custom base
URL speak:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="KEY")
    image = client.images.generate(prompt="a red circle", n=2, response_format="b64_json").data[0]

`POST /v1/images/generations` takes `prompt`, `n`, `size`, `response_format` (`b64_json` or `url`, OpenAI's
default), `model`, `user` (and `quality` "standard"/"auto", `output_format` "png", which change nothing
here); it answers `{created, data: [{b64_json | url}]}`, best CLIP score first, each PNG carrying what
reproduces it in its text chunks. `url`s are served by this server from a bounded, expiring store
(`GET /v1/images/files/TOKEN.png`, no key needed: the token is the capability). `GET /v1/models` names the
served pipeline. Errors are OpenAI's `{"error": {message, type, param, code}}`; a size other than the
model's is refused naming the one it makes. The sampling defaults are the pipeline's own.
"""

from __future__ import annotations

import base64
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from ..pipeline import PromptImages
from ..png_metadata import png_bytes
from .http_errors import RequestError
from .image_store import ImageStore
from .jobs import Batcher

RESPONSE_FORMATS = ("url", "b64_json")
QUALITIES = ("standard", "auto")  # what LangChain's DallEAPIWrapper sends by default


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    n: int = 1
    size: Optional[str] = None
    response_format: Optional[str] = None
    model: Optional[str] = None
    user: Optional[str] = None
    quality: Optional[str] = None
    output_format: Optional[str] = None


def check_images_request(body: ImagesRequest, model_id: str, resolution: int, most: int) -> str:
    """The response format, after every field is checked against what this server makes."""
    if body.model is not None and body.model != model_id:
        raise RequestError(f"the model {body.model!r} is not served here: this server serves {model_id!r} "
                           "(leave `model` out, or send that name)", 404, "model", "model_not_found")
    size = f"{resolution}x{resolution}"
    if body.size not in (None, "auto", size):
        raise RequestError(f"size {body.size!r} is not one this model makes: it makes {size} images (send "
                           f"size={size!r}, or leave `size` out)", param="size", code="invalid_size")
    if body.response_format not in (None, *RESPONSE_FORMATS):
        raise RequestError(f"response_format {body.response_format!r} must be one of "
                           f"{list(RESPONSE_FORMATS)}", param="response_format")
    if body.quality not in (None, *QUALITIES):
        raise RequestError(f"quality {body.quality!r}: this model has one quality; send one of "
                           f"{list(QUALITIES)} or leave it out", param="quality")
    if body.output_format not in (None, "png"):
        raise RequestError(f"output_format {body.output_format!r}: this server makes PNGs only",
                           param="output_format")
    if not 1 <= body.n <= most:
        raise RequestError(f"n={body.n} must be between 1 and {most} (the most images this server samples at "
                           "once, --batch-images)", param="n")
    return body.response_format or "url"


def encoded(result: PromptImages, response_format: str, store: ImageStore, base_url: str) -> list[dict]:
    data = []
    for i, image in enumerate(result.images):
        png = png_bytes(image, result.metadata(i))
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(png).decode()})
        else:
            data.append({"url": f"{base_url}v1/images/files/{store.put(png)}.png"})
    return data


def add_openai_api(app: FastAPI, batcher: Batcher, fields: dict[str, list[str]]) -> ImageStore:
    settings, started = batcher.settings, int(time.time())
    resolution = batcher.pipe.vqgan.config.resolution
    store = ImageStore(settings.url_store_bytes, settings.url_ttl)
    fields["/v1/images/generations"] = list(ImagesRequest.model_fields)
    model = {"id": settings.model_id, "object": "model", "created": started, "owned_by": "dalle-mini-pt"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model]}

    @app.get("/v1/models/{model_id}")
    async def one_model(model_id: str) -> dict:
        if model_id != settings.model_id:
            raise RequestError(f"the model {model_id!r} is not served here: this server serves "
                               f"{settings.model_id!r}", 404, "model", "model_not_found")
        return model

    @app.post("/v1/images/generations")
    async def generations(body: ImagesRequest, request: Request) -> dict:
        response_format = check_images_request(body, settings.model_id, resolution, batcher.batch_images)
        job = batcher.submit([body.prompt], {"num_images": body.n})
        (result,) = await batcher.outcome(job)
        data = await run_in_threadpool(encoded, result, response_format, store, str(request.base_url))
        return {"created": int(time.time()), "data": data}

    @app.get("/v1/images/files/{name}")
    async def image_file(name: str) -> Response:
        png = store.get(name.removesuffix(".png"))
        if png is None:
            raise RequestError(f"no image {name!r}: image URLs last {settings.url_ttl:g} s (and the oldest "
                               "go first when the store is full); ask for the image again", 404,
                               code="not_found")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return store
