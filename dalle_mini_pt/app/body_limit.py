"""A bound on every request body, however it is sent: a declared `Content-Length` over the bound is refused
before a byte is read, and a chunked body (which declares none) is counted as it arrives and cut off at the
bound, so neither the API nor the page's upload route ever holds more."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http_errors import OPENAI_PREFIX, Failure, answer


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self, scope: Scope):
        failure = Failure(413, f"the request body is over {self.max_bytes} bytes, the most this server reads",
                          "invalid_request_error", "too_large")
        response = answer(failure, scope["path"].startswith(OPENAI_PREFIX))
        response.headers["connection"] = "close"
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refusal(scope)(scope, receive, send)
            return
        received, refused, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:  # the app reads before it answers: the 413 can still go out
                        await self._refusal(scope)(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading and answers no one
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)
