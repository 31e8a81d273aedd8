"""Stopping without losing an answer. On SIGTERM (or Ctrl-C) the server stops taking work (a request that
would start some gets 503), answers every request still waiting for a batch (503: it had not started),
lets the running batch finish and its clients (page and API) get their images, waits until nothing is
in flight for a moment (the page fetches its images after the answer), then lets uvicorn close, and the
process exits 0. A second Ctrl-C quits at once.

uvicorn's own handler would close the listening socket first and re-raise the signal after shutting
down (so the process dies of it); `GracefulServer` replaces that handler.
"""

from __future__ import annotations

import signal
import threading
import time

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from .http_errors import OPENAI_PREFIX, answer, failure_of
from .jobs import Batcher, ShuttingDown

WORK_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class Draining:
    """The shutdown state the routes, the middleware and the signal handler share."""

    def __init__(self):
        self.draining = False
        self.in_flight = 0  # HTTP requests being answered
        self.last_active = time.monotonic()


class DrainGate:
    """ASGI middleware: counts requests in flight; while draining, answers 503 to those that would start
    work, and lets reads (the images of answered requests, /health) through."""

    def __init__(self, app: ASGIApp, state: Draining):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining and scope["method"] in WORK_METHODS:
            refusal = ShuttingDown("the server is shutting down: it takes no new requests")
            response = answer(failure_of(refusal), scope["path"].startswith(OPENAI_PREFIX))
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1
            self.state.last_active = time.monotonic()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, stopping as the module says. `quiet` seconds without a request in flight end the
    wait for clients, `patience` seconds end it in any case."""

    def __init__(self, config: uvicorn.Config, batcher: Batcher, state: Draining, quiet: float = 1.0,
                 patience: float = 30.0):
        super().__init__(config)
        self.batcher, self.state, self.quiet, self.patience = batcher, state, quiet, patience

    def handle_exit(self, sig: int, frame) -> None:  # noqa: ARG002  (a signal handler's signature)
        if self.state.draining:
            if sig == signal.SIGINT:
                self.should_exit = self.force_exit = True
            return
        self.state.draining = True
        threading.Thread(target=self._drain, name="dalle-mini-pt-drain", daemon=True).start()

    def _drain(self) -> None:
        self.batcher.drain()
        deadline = time.monotonic() + self.patience
        while time.monotonic() < deadline:
            idle = self.state.in_flight == 0 and time.monotonic() - self.state.last_active >= self.quiet
            if idle:
                break
            time.sleep(0.05)
        self.should_exit = True
