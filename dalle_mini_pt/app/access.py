"""Who may talk to the server: the Host header must name the server (so a page on another site cannot reach
it through DNS rebinding), and with an API key every route but /health and the image URLs (unguessable,
expiring) needs it, as `Authorization: Bearer KEY` (API clients) or HTTP Basic with the key as password
(browsers ask for it themselves), compared in constant time. Both are ASGI middleware, so they cover the
page, its uploads and its event streams as well as the API."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
import socket
from typing import Iterable, Optional
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .http_errors import OPENAI_PREFIX, Failure, answer

OPEN_PATHS = ("/health", "/v1/images/files/")  # no key: liveness probes, and URLs handed to image viewers
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """True when every address `host` names is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bound_names(host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names a Host header may hold for a server bound to `host`: the loopback names, the bound name,
    and for a wildcard bind (0.0.0.0) this machine's name and the addresses it resolves to."""
    names = {*LOOPBACK_NAMES, host.lower(), *(e.lower() for e in extra)}
    if host in WILDCARD_HOSTS:
        names.discard(host)
        hostname = socket.gethostname()
        names |= {hostname.lower(), socket.getfqdn().lower()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    return tuple(sorted(names))


def host_of(header: Optional[str]) -> Optional[str]:
    """The host name of a Host header ("[::1]:7860" -> "::1"), or None for one that is not a host."""
    if not header:
        return None
    try:
        host = urlsplit("//" + header).hostname
    except ValueError:
        return None
    return host


class HostCheck:
    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app, self.allowed = app, {a.lower() for a in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host")
        if host_of(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = (f"Host header {header!r} is not a name this server answers to ({sorted(self.allowed)}); "
                   "start it with --allowed-host NAME to serve another name")
        failure = Failure(400, message, "invalid_request_error", "invalid_host", "host")
        await answer(failure, scope["path"].startswith(OPENAI_PREFIX))(scope, receive, send)


def key_in(header: Optional[str]) -> Optional[str]:
    """The key an Authorization header carries: `Bearer KEY`, or Basic with KEY as the password."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError):
            return None
    return None


class KeyCheck:
    def __init__(self, app: ASGIApp, key: Optional[str]):
        self.app, self.key = app, None if key is None else key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.key is None or scope["type"] not in ("http", "websocket") or path.startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        given = key_in(Headers(scope=scope).get("authorization"))
        if given is not None and secrets.compare_digest(given.encode("utf-8"), self.key):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = ("a missing or wrong API key: send `Authorization: Bearer KEY` with the key the server was "
                   "started with (--api-key); in a browser, any user name and the key as password")
        response = answer(Failure(401, message, "invalid_request_error", "invalid_api_key"),
                          path.startswith(OPENAI_PREFIX))
        response.headers.append("WWW-Authenticate", 'Basic realm="dalle-mini-pt", charset="UTF-8"')
        response.headers.append("WWW-Authenticate", 'Bearer realm="dalle-mini-pt"')
        await response(scope, receive, send)
