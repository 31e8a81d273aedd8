"""How the server answers what went wrong: the checks' and the batcher's exceptions become HTTP statuses, in
the project API's shape (`{"detail": message}`) or, under /v1/, OpenAI's (`{"error": {"message", "type",
"param", "code"}}`), which the `openai` clients turn into their own exceptions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..request_checks import RequestTooLarge
from .jobs import BadRequest, GenerationFailed, QueueFull, ShuttingDown, TooLarge, WaitedTooLong

OPENAI_PREFIX = "/v1/"
log = logging.getLogger("dalle_mini_pt.app")


class RequestError(Exception):
    """A request a route refuses, with its HTTP status and, for OpenAI's shape, the field and a code."""

    def __init__(self, message: str, status: int = 422, param: Optional[str] = None,
                 code: str = "invalid_value", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}


@dataclass
class Failure:
    status: int
    message: str
    type: str
    code: str
    param: Optional[str] = None
    headers: dict = field(default_factory=dict)


def failure_of(e: BaseException) -> Failure:
    """The answer for an exception raised while checking, queueing or running a request."""
    if isinstance(e, RequestError):
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return Failure(e.status, str(e), kind, e.code, e.param, e.headers)
    if isinstance(e, QueueFull):
        return Failure(429, str(e), "rate_limit_error", "queue_full",
                       headers={"Retry-After": str(e.retry_after)})
    if isinstance(e, ShuttingDown):
        return Failure(503, str(e), "server_error", "shutting_down", headers={"Retry-After": "10"})
    if isinstance(e, WaitedTooLong):
        return Failure(503, str(e), "server_error", "timeout", headers={"Retry-After": "10"})
    if isinstance(e, (TooLarge, RequestTooLarge)):
        return Failure(413, str(e), "invalid_request_error", "too_large")
    if isinstance(e, (BadRequest, ValueError, TypeError)):
        return Failure(422, str(e), "invalid_request_error", "invalid_value")
    if isinstance(e, GenerationFailed):
        log.error("a request failed", exc_info=e.__cause__)
        return Failure(500, str(e), "server_error", "generation_failed")
    log.error("a request failed", exc_info=e)
    return Failure(500, f"the server failed: {type(e).__name__}: {e}", "server_error", "server_error")


def answer(failure: Failure, openai: bool) -> JSONResponse:
    if not openai:
        return JSONResponse({"detail": failure.message}, failure.status, headers=failure.headers)
    status = 400 if failure.status == 422 else failure.status  # OpenAI answers bad values with 400
    body = {"error": {"message": failure.message, "type": failure.type, "param": failure.param,
                      "code": failure.code}}
    return JSONResponse(body, status, headers=failure.headers)


def validation_failure(e: RequestValidationError, fields: dict[str, list[str]], path: str) -> Failure:
    """pydantic's first complaint as one sentence naming the field (and, for an unknown one, the fields
    the route takes)."""
    error = e.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    name = ".".join(loc) or "body"
    param = loc[0] if loc else None
    if error["type"] == "extra_forbidden":
        message = f"unknown field {name!r}: this route takes {fields.get(path, [])}"
        if path == "/api/generate":
            message += " (sampling options such as top_k go inside `options`)"
    elif error["type"] == "missing":
        message = f"missing field {name!r}"
    elif error["type"] == "json_invalid":
        message = f"the body is not valid JSON: {error.get('msg')}"
    else:
        message = f"{name}: {error.get('msg')}"
    return Failure(422, message, "invalid_request_error", "invalid_value", param)


def add_error_handlers(app: FastAPI, fields: dict[str, list[str]]) -> None:
    """`fields`: route path -> the body fields it takes, for the unknown-field message."""

    def is_openai(request: Request) -> bool:
        return request.url.path.startswith(OPENAI_PREFIX)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return answer(validation_failure(e, fields, request.url.path), is_openai(request))

    for kind in (RequestError, BadRequest, QueueFull, ShuttingDown, WaitedTooLong, RequestTooLarge,
                 GenerationFailed):
        app.add_exception_handler(kind, lambda request, e: answer(failure_of(e), is_openai(request)))
