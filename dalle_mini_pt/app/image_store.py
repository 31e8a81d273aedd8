"""The PNGs behind the OpenAI route's `url` answers: each under an unguessable token for `ttl` seconds, at
most `max_bytes` of them in all (the oldest dropped first), in memory, so nothing is left on disk and the
store cannot grow past its bound however many images are asked for."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional


class ImageStore:
    def __init__(self, max_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.ttl, self.clock = max_bytes, ttl, clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        """Keep `data`; the token that fetches it."""
        if len(data) > self.max_bytes:
            raise ValueError(f"an image of {len(data)} bytes is over the url store's {self.max_bytes}")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._drop(self.clock())
            while self._bytes + len(data) > self.max_bytes:
                self._pop_oldest()
            self._items[token] = (self.clock() + self.ttl, data)
            self._bytes += len(data)
        return token

    def get(self, token: str) -> Optional[bytes]:
        with self._lock:
            self._drop(self.clock())
            item = self._items.get(token)
        return None if item is None else item[1]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _drop(self, now: float) -> None:
        """The expired ones: they are the oldest, since every image lives as long."""
        while self._items and next(iter(self._items.values()))[0] <= now:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, (_, data) = self._items.popitem(last=False)
        self._bytes -= len(data)
