"""Image–caption pairs: the sample every input format yields, how its bytes become the VQGAN's input, and
the folder source (img2dataset's `files` output: `00000/000000001.jpg` + `.txt` caption + optional `.json`).

The other formats live beside it: `tar_source` (webdataset shards), `table_source` (parquet/CSV tables of
image paths or bytes), `hf_source` (Hugging Face datasets); `input_formats.open_source` picks one.
Indexed sources (folder, table, hf) list their items once, in sorted order, without reading any image;
`read(i)` fetches item i's bytes and caption (in a DataLoader worker) and raises when they cannot be had.
`load_image` turns bytes into the VQGAN's input the way the reference's encoding did: shortest side resized
with LANCZOS, centre crop.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .item_index import PathIndex, sorted_walk

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Sample:
    key: str
    image: bytes
    caption: str
    fields: dict = field(default_factory=dict)  # passthrough values, e.g. a CLIP score


# what transparent pixels are composited on: the white a viewer shows behind an image
ALPHA_BACKGROUND = (255, 255, 255)


def as_rgb(im: Image.Image) -> Image.Image:
    """An image as a viewer shows it, in 8-bit RGB: turned upright by its EXIF orientation, 16-bit and 32-bit
    greyscale scaled into 0..255 (PIL's convert("RGB") clips them, so a 16-bit PNG became pure white), and
    transparency composited on `ALPHA_BACKGROUND` (convert("RGB") drops the alpha, leaving whatever colour
    the transparent pixels happen to hold, often black). The reference's encoding did the plain convert, so
    such images get other codes here than there."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or values.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(data: bytes, resolution: int) -> np.ndarray:
    """Image bytes -> (resolution, resolution, 3) uint8: `as_rgb`, then torchvision's Resize(resolution,
    LANCZOS) and CenterCrop(resolution), the reference's 2021 preprocessing, done in PIL. Raises on bad or
    cut files."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes the whole file: a truncated one raises here, not later
        im = as_rgb(im)
    w, h = im.size
    scale = resolution / min(w, h)
    size = (resolution, int(resolution * h / w)) if w <= h else (int(resolution * w / h), resolution)
    if scale != 1:
        im = im.resize(size, Image.Resampling.LANCZOS)
    w, h = im.size
    top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
    return np.array(im.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def passthrough_fields(meta: dict, names: Sequence[str]) -> dict:
    return {name: meta.get(name) for name in names}


def error_message(err: BaseException) -> str:
    """`Type: message` without object reprs (`<_io.BytesIO at 0x...>`), so reruns write identical reports."""
    return re.sub(r" ?<[^>]*>", "", f"{type(err).__name__}: {err}")


class FolderSource:
    """Listed once (`item_index.sorted_walk`) into a columnar `PathIndex`; captions and sidecars are read
    with the image, in the DataLoader worker."""

    def __init__(self, root: Union[str, Path], passthrough: Sequence[str] = ()):
        self.root, self.passthrough = Path(os.path.expanduser(str(root))), tuple(passthrough)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input.path={str(root)!r} is not a folder")
        self.paths = PathIndex(sorted_walk(str(self.root), IMAGE_EXTENSIONS))

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i]

    def read(self, i: int) -> Sample:
        rel = self.paths[i]
        path = self.root / rel
        try:
            caption = path.with_suffix(".txt").read_text(encoding="utf8").strip()
        except FileNotFoundError:
            raise ValueError(f"no caption file {path.with_suffix('.txt').name}") from None
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text(encoding="utf8")) if sidecar.exists() else {}
        key = str(meta.get("key") or Path(rel).with_suffix(""))
        return Sample(key, path.read_bytes(), caption, passthrough_fields(meta, self.passthrough))
