"""`ServerSettings`: every knob of the demo server in one place, checked when it is made (the command line
turns a bad value into exit 2 before any model loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..request_checks import ImageLimits, check_every


@dataclass(frozen=True)
class ServerSettings:
    batch_images: int = 16  # most images in one sampler call
    wait: float = 0.05  # seconds a request waits for others to merge with
    every: Optional[int] = -1  # sampling steps between the page's partial images (-1: one code row)
    max_queue: int = 64  # requests waiting for a batch; one more is answered 429
    timeout: Optional[float] = 300.0  # most seconds a request waits for its batch to start; then 503
    max_prompt_chars: int = 1000
    image: ImageLimits = field(default_factory=ImageLimits)
    api_key: Optional[str] = None  # when set, every route but /health and image URLs needs it
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")  # names the Host header may hold
    cors_origins: tuple[str, ...] = ()  # other web origins whose pages may call the API (no credentials)
    model_id: str = "dalle-mini-pt"  # the model name the OpenAI route serves and /v1/models lists
    url_ttl: float = 3600.0  # seconds an OpenAI `url` answer stays fetchable
    url_store_bytes: int = 256 * 2**20  # most PNG bytes kept for `url` answers; the oldest go first

    def __post_init__(self) -> None:
        def whole(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be a whole number >= {low}")

        whole("batch_images", 1)
        whole("max_queue", 1)
        whole("max_prompt_chars", 1)
        whole("url_store_bytes", 1)
        if not (math.isfinite(self.wait) and self.wait >= 0):
            raise ValueError(f"wait={self.wait!r} must be a number of seconds >= 0")
        for name in ("timeout", "url_ttl"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a number of seconds > 0")
        try:
            check_every(self.every, 1, 1)
        except ValueError as e:
            raise ValueError(f"stream every: {e}") from None
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty: give a non-empty one, or none")

    @property
    def max_body_bytes(self) -> int:
        """Most bytes of a request body: an image to complete, base64 in JSON (4/3 of it), and the rest."""
        return self.image.max_bytes * 4 // 3 + 2**20
