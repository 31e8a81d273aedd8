"""`GET /metrics` in Prometheus' text format (prometheus-client): requests by route and status, request
latency, queue depth, requests running, batch sizes, images made and images/s over the last minute. Each
app has its own registry, so two apps in one process do not share counts."""

from __future__ import annotations

import collections
import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# a bounded set of route labels: the page's many paths count as one
ROUTES = ("/api/generate", "/v1/images/generations", "/v1/models", "/v1/images/files", "/health", "/metrics")
RATE_WINDOW = 60.0


def route_of(path: str) -> str:
    return next((r for r in ROUTES if path == r or path.startswith(r + "/")), "page")


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("dalle_mini_pt_requests", "HTTP requests answered", ["route", "status"],
                                registry=r)
        self.latency = Histogram("dalle_mini_pt_request_seconds", "seconds from request to answer", ["route"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.batch_images = Histogram("dalle_mini_pt_batch_images", "images per sampler call",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram("dalle_mini_pt_batch_seconds", "seconds per sampler call", registry=r)
        self.images = Counter("dalle_mini_pt_images", "images generated", registry=r)
        self.queue = Gauge("dalle_mini_pt_queue_depth", "requests waiting for a batch", registry=r)
        self.running = Gauge("dalle_mini_pt_requests_running", "requests in the running batch", registry=r)
        self.rate = Gauge("dalle_mini_pt_images_per_second", f"images generated per second over the last "
                          f"{RATE_WINDOW:g} s", registry=r)
        self.rate.set_function(self._images_per_second)
        self._recent: collections.deque = collections.deque()  # (time, images) of recent batches
        self._started = time.monotonic()

    def watch(self, batcher) -> None:
        self.queue.set_function(lambda: batcher.waiting)
        self.running.set_function(lambda: batcher.running)

    def batch_done(self, images: int, seconds: float) -> None:
        """The batcher's `on_batch`."""
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)
        self.images.inc(images)
        self._recent.append((time.monotonic(), images))

    def _images_per_second(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / max(1e-9, min(RATE_WINDOW, now - self._started))

    def add_route(self, app: FastAPI) -> None:
        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: each HTTP request's route, status and latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = route_of(scope["path"])
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
