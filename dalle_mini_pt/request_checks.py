"""What a generation request must be before any work starts: its prompts, the rows kept from an image to
complete, how often partial images come, and an image to complete given as a file's bytes (its size, each
side and its aspect bounded before a pixel is decoded or resized). `DalleMiniPipeline` runs these on every
call and the demo server when a request arrives, so a bad request never joins a batch with good ones.
The sampling options are `GenerationConfig`'s own checks."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from .data.image_sources import load_image


class RequestTooLarge(ValueError):
    """A request over one of its size bounds (the demo server answers 413)."""


def check_prompts(prompts: Union[str, Sequence[str]], max_chars: Optional[int] = None) -> list[str]:
    """A prompt or a list of them -> the list; each must be text (valid Unicode: a lone surrogate such as
    "\\ud800" is not) of at most `max_chars` characters."""
    if not isinstance(prompts, (str, Sequence)):
        raise TypeError(f"prompts must be a string or a list of strings; got {type(prompts).__name__}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass a string or a list of strings")
    wrong = [p for p in prompts if not isinstance(p, str)]
    if wrong:
        raise TypeError(f"prompts must be strings; got {type(wrong[0]).__name__} {wrong[0]!r}")
    for i, prompt in enumerate(prompts):
        if max_chars is not None and len(prompt) > max_chars:
            raise RequestTooLarge(f"prompt {i} is {len(prompt)} characters, over {max_chars}: shorten it "
                                  "(the tokenizer keeps only the first few dozen words anyway)")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"prompt {i} is not valid Unicode text: {prompt[e.start:e.end]!r} at character "
                             f"{e.start} is a lone surrogate; send the text as UTF-8") from None
    if any(not p.strip() for p in prompts):
        warnings.warn("an empty prompt is the unconditional prompt: its images follow no text", stacklevel=3)
    return prompts


def check_keep_rows(keep_rows, grid: int, has_image: bool) -> int:
    """The code rows kept from an image to complete: 0 (plain generation) to the whole grid."""
    if isinstance(keep_rows, bool) or not isinstance(keep_rows, int) or not 0 <= keep_rows <= grid:
        raise ValueError(f"keep_rows={keep_rows!r} must be a whole number in 0..{grid} (rows of the "
                         f"{grid}x{grid} code grid kept from init_image; 0 is plain generation)")
    if keep_rows and not has_image:
        raise ValueError(f"keep_rows={keep_rows} needs init_image (it needs an image to complete: the one "
                         "whose top rows are kept)")
    return keep_rows


def check_every(every, grid: int, length: int) -> int:
    """How many sampling steps between partial images: -1 is one row of the code grid, None only the end."""
    if every is None:
        return length
    if isinstance(every, bool) or not isinstance(every, int) or not (every == -1 or every >= 1):
        raise ValueError(f"every={every!r} must be -1 (a partial image per row of codes), a number of steps "
                         ">= 1, or None (only the finished images)")
    return grid if every == -1 else every


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on an image to complete, all checked from its header before any pixel is decoded. Each side
    and the aspect are bounded because the image is resized so its short side is the VQGAN's resolution:
    a 1x100000 strip (a few hundred bytes of PNG) would otherwise become a 64x6400000 one."""

    max_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    max_side: int = 4096
    max_aspect: float = 8.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a whole number >= 1")
        if not self.max_aspect >= 1:
            raise ValueError(f"max_aspect={self.max_aspect!r} must be >= 1 (long side / short side)")


def read_init_image(data: bytes, resolution: int, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """An image file's bytes -> the VQGAN's input (resolution, resolution, 3) uint8, fitted as the data
    encoder fits images; `RequestTooLarge` over a bound, `ValueError` for what is not an image."""
    if len(data) > limits.max_bytes:
        raise RequestTooLarge(f"init_image is {len(data)} bytes, over {limits.max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only: the size before any pixel
            w, h = im.size
    except Exception:
        raise ValueError("init_image is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
    if w * h > limits.max_pixels:
        raise RequestTooLarge(f"init_image is {w}x{h}, over {limits.max_pixels} pixels: scale it down")
    if max(w, h) > limits.max_side:
        raise RequestTooLarge(f"init_image is {w}x{h}, a side over {limits.max_side} pixels: scale it down")
    if max(w, h) > limits.max_aspect * min(w, h):
        raise RequestTooLarge(f"init_image is {w}x{h}: its long side is over {limits.max_aspect:g} times "
                              "its short one; crop it nearer to a square (it is centre-cropped to one)")
    try:
        return load_image(data, resolution)
    except Exception as e:
        raise ValueError(f"init_image could not be decoded ({e})") from None
