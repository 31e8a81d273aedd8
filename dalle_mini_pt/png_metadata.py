"""PNG files that say how they were made: text chunks (iTXt, UTF-8) with the prompt, seed and settings,
written by the command line (`--save-each`), the demo's downloads and its HTTP API, and read back by any
PNG reader (`PIL.Image.open(f).text`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Union

from PIL import Image, PngImagePlugin


def _info(text: Mapping[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, str(value))  # not tEXt (Latin-1): prompts keep their accents and emoji
    return info


def png_bytes(image: Image.Image, text: Mapping[str, str]) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_info(text))
    return buffer.getvalue()


def save_png(image: Image.Image, path: Union[str, Path], text: Mapping[str, str]) -> Path:
    path = Path(path)
    image.save(path, format="PNG", pnginfo=_info(text))
    return path


def read_png_text(source: Union[str, Path, bytes]) -> dict[str, str]:
    """The text chunks of a PNG file or of PNG bytes."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()
        return dict(image.text)
