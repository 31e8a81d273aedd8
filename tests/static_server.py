"""A folder served over HTTP on a loopback port by aiohttp's static file handler (the one fsspec's HTTP
filesystem is tested against upstream): Range requests, HEAD and directory listings (which fsspec reads to
expand globs), with a log of every request it answered. Real sockets and real requests: nothing is patched.

    with StaticServer(folder) as server:
        url = server.url("train/*.parquet")
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None  # the Range header, as sent
    status: int


class StaticServer:
    def __init__(self, root: Path):
        self.root, self.requests = Path(root), []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def __enter__(self) -> StaticServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    @web.middleware
    async def _log(self, request: web.Request, handler):
        response = await handler(request)
        self.requests.append(Request(request.method, request.path, request.headers.get("Range"),
                                     response.status))
        return response

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._log])
        app.router.add_static("/", self.root, show_index=True)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def reads_of(self, suffix: str) -> list[Request]:
        """The GET requests for files whose path ends with `suffix`."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]
