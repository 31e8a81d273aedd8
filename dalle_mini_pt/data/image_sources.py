"""Image–caption pairs in one fixed order, from the three layouts people hold them in.

- `FolderSource`: an img2dataset output folder (`00000/000000001.jpg` + `.txt` caption + optional `.json`).
- `TarSource`: webdataset tar shards (the same files inside plain, uncompressed `.tar`s).
- `TableSource`: a parquet or CSV table with an image-path column and a caption column.

Each lists its items once, in sorted order, without reading any image; `read(i)` fetches item i's bytes and
caption (in a DataLoader worker) and raises when they cannot be had. `load_image` turns bytes into the
VQGAN's input the way the reference's encoding did: shortest side resized with LANCZOS, centre crop.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image, ImageOps

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


def _passthrough(meta: dict, names: Sequence[str]) -> dict:
    return {name: meta.get(name) for name in names}


class FolderSource:
    def __init__(self, root: Union[str, Path], passthrough: Sequence[str] = ()):
        self.root, self.passthrough = Path(root), tuple(passthrough)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input.path={str(root)!r} is not a folder")
        self.paths = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i]

    def read(self, i: int) -> Sample:
        path = self.root / self.paths[i]
        try:
            caption = path.with_suffix(".txt").read_text(encoding="utf8").strip()
        except FileNotFoundError:
            raise ValueError(f"no caption file {path.with_suffix('.txt').name}") from None
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text(encoding="utf8")) if sidecar.exists() else {}
        key = str(meta.get("key") or Path(self.paths[i]).with_suffix(""))
        return Sample(key, path.read_bytes(), caption, _passthrough(meta, self.passthrough))


def _split_key(member: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, name = member.rpartition("/")
    stem, _, ext = name.partition(".")
    return f"{folder}/{stem}" if folder else stem, "." + ext.lower()


class TarSource:
    def __init__(self, paths: Union[str, Sequence[str]], passthrough: Sequence[str] = ()):
        patterns = [paths] if isinstance(paths, str) else list(paths)
        self.tars = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(str(pattern)))})
        if not self.tars:
            raise FileNotFoundError(f"input.path={patterns!r} matches no tar file")
        self.passthrough = tuple(passthrough)
        self.items: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for t, path in enumerate(self.tars):
            self.items += [(t, key, files) for key, files in self._members(path).items()
                           if any(ext in files for ext in IMAGE_EXTENSIONS)]

    @staticmethod
    def _members(path: str) -> dict[str, dict[str, tuple[int, int]]]:
        """key -> extension -> (data offset, size), in tar order; images are read later by offset."""
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if m.isfile():
                        key, ext = _split_key(m.name)
                        groups.setdefault(key, {})[ext] = (m.offset_data, m.size)
        except tarfile.ReadError as err:
            raise ValueError(f"{path}: not a plain tar ({err}); webdataset shards must be uncompressed "
                             ".tar files") from None
        return groups

    def __len__(self) -> int:
        return len(self.items)

    def _image_ext(self, files: dict) -> str:
        return next(ext for ext in IMAGE_EXTENSIONS if ext in files)

    def name(self, i: int) -> str:
        t, key, files = self.items[i]
        return f"{self.tars[t]}:{key}{self._image_ext(files)}"

    def read(self, i: int) -> Sample:
        t, key, files = self.items[i]
        with open(self.tars[t], "rb") as f:
            def member(ext):
                offset, size = files[ext]
                f.seek(offset)
                return f.read(size)
            if ".txt" not in files:
                raise ValueError(f"no caption member {key}.txt")
            caption = member(".txt").decode("utf8").strip()
            meta = json.loads(member(".json")) if ".json" in files else {}
            image = member(self._image_ext(files))
        return Sample(str(meta.get("key") or key), image, caption, _passthrough(meta, self.passthrough))


def _read_table(path: Path):
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pacsv.read_csv(path)
        if suffix == ".tsv":
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"input.path={str(path)!r}: not a readable {suffix.lstrip('.') or 'parquet'} table "
                         f"({type(err).__name__}: {err}); tables are .parquet, .csv or .tsv files") from None


class TableSource:
    """Image paths may be absolute or relative to the table's folder."""

    def __init__(self, path: Union[str, Path], image_column: str = "image_path",
                 caption_column: str = "caption", passthrough: Sequence[str] = ()):
        path = Path(path)
        table = _read_table(path)
        wanted = [("input.image_column", image_column), ("input.caption_column", caption_column)]
        for key, column in wanted + [("input.passthrough", c) for c in passthrough]:
            if column not in table.column_names:
                raise ValueError(f"{path}: no column {column!r} (has {table.column_names}); set {key}")
        self.base, self.passthrough = path.parent, tuple(passthrough)
        self.images = [str(p) for p in table.column(image_column).to_pylist()]
        self.captions = table.column(caption_column).to_pylist()
        self.keys = table.column("key").to_pylist() if "key" in table.column_names else None
        self.fields = {c: table.column(c).to_pylist() for c in self.passthrough}

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.images[i]

    def read(self, i: int) -> Sample:
        path = Path(os.path.expanduser(self.images[i]))
        key = str(self.keys[i]) if self.keys else str(Path(self.images[i]).with_suffix(""))
        if self.captions[i] is None:
            raise ValueError("no caption")
        image = (path if path.is_absolute() else self.base / path).read_bytes()
        return Sample(key, image, str(self.captions[i]).strip(), {c: v[i] for c, v in self.fields.items()})


def open_source(format: str, path, passthrough: Sequence[str] = (), image_column: str = "image_path",
                caption_column: str = "caption"):
    """The source for `input.format` (folder | tar | table)."""
    if format == "folder":
        return FolderSource(path, passthrough)
    if format == "tar":
        return TarSource(path, passthrough)
    if format == "table":
        return TableSource(path, image_column, caption_column, passthrough)
    raise ValueError(f"input.format={format!r}: use folder (img2dataset output), tar (webdataset shards) "
                     "or table (parquet/CSV of image paths and captions)")
