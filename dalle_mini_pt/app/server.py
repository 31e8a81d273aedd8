"""The demo's server: one FastAPI app holding the project's API (`api.py`), the OpenAI Images API
(`openai_api.py`), `/metrics`, and the Gradio page mounted at `/`, all feeding one `Batcher`, behind the
checks every request passes first (outermost first): metrics, the Host header, CORS (only the
`cors_origins` given; Gradio's own rule would trust every localhost origin with credentials), the API key,
the shutdown gate, the body bound.

Its files (the page's images and uploads) live in one temporary folder, removed when the app closes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ..pipeline import DalleMiniPipeline
from .access import HostCheck, KeyCheck
from .api import add_api
from .body_limit import BodyLimit
from .http_errors import add_error_handlers
from .jobs import Batcher
from .metrics import Metrics, RequestMetrics
from .openai_api import add_openai_api
from .settings import ServerSettings
from .shutdown import DrainGate, Draining


def create_app(pipe: DalleMiniPipeline, settings: Optional[ServerSettings] = None,
               ui: bool = True) -> FastAPI:
    """The whole server; `ui=False` leaves the Gradio page out (the APIs alone). `app.state.close()` stops
    the batcher and removes the app's files (the lifespan's end runs it too)."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    batcher = Batcher(pipe, settings, on_batch=metrics.batch_done)
    metrics.watch(batcher)
    files = Path(tempfile.mkdtemp(prefix="dalle_mini_pt_app_"))
    draining = Draining()

    def close() -> None:
        batcher.drain()
        shutil.rmtree(files, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        close()

    app = FastAPI(title="dalle-mini-pt", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.batcher, app.state.draining, app.state.files, app.state.close = batcher, draining, files, close
    fields: dict[str, list[str]] = {}
    add_api(app, batcher, draining, fields)
    app.state.image_store = add_openai_api(app, batcher, fields)
    metrics.add_route(app)
    add_error_handlers(app, fields)
    if ui:
        # Gradio puts its cache (uploads, the gallery's images) where this says, read as it is imported
        os.environ["GRADIO_TEMP_DIR"] = str(files / "gradio")
        from .ui import mount_ui  # gradio is imported only for the page

        app = mount_ui(app, batcher, files / "downloads")
    # add_middleware puts each in front of those added before it
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DrainGate, state=draining)
    app.add_middleware(KeyCheck, key=settings.api_key)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"])
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
