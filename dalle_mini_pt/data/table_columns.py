"""Which columns of a table hold the images and captions, what their types mean, and a row as a `Sample`.

Shared by the table files (`table_source`) and Hugging Face datasets (`hf_source`): both are Arrow tables.
The image column's type says what it holds: text is a path (absolute, relative to the table's folder, or a
URL), binary is the image file's bytes (img2dataset's parquet output, column `jpg`), a struct with `bytes` and
`path` is Hugging Face's `Image` storage. Anything else is refused when the table is opened, before any
image is read, naming the column, its type and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Optional, Sequence

import fsspec
import pyarrow as pa

from .image_sources import Sample
from .input_files import is_remote

# tried in this order when input.image_column / input.caption_column are null
IMAGE_COLUMNS = ("image_path", "jpg", "png", "webp", "jpeg", "image", "img")
CAPTION_COLUMNS = ("caption", "txt", "text")


def pick_column(names: Sequence[str], chosen: Optional[str], candidates: Sequence[str], key: str,
                where: str) -> str:
    if chosen is not None:
        if chosen not in names:
            raise ValueError(f"{where}: no column {chosen!r} (has {list(names)}); set {key}")
        return chosen
    found = next((c for c in candidates if c in names), None)
    if found is None:
        raise ValueError(f"{where}: none of the columns {list(names)} is one of {list(candidates)}; name the "
                         f"right one with {key}=COLUMN")
    return found


def image_kind(schema: pa.Schema, column: str, where: str) -> str:
    """'path', 'bytes' or 'struct' for the image column's type; other types are refused."""
    t = schema.field(column).type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}:
        return "struct"
    raise ValueError(f"{where}: column {column!r} holds {t}, which is neither image paths (text), "
                     "image bytes (binary) nor a Hugging Face Image struct {bytes, path}. Set "
                     "input.image_column to the column with the images")


def check_caption_type(schema: pa.Schema, column: str, where: str) -> None:
    t = schema.field(column).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise ValueError(f"{where}: column {column!r} holds {t}, not text, so it cannot be the captions. Set "
                         "input.caption_column to the text column, or cast this one to strings first")


@dataclass(frozen=True)
class Columns:
    """The columns a source reads, checked against its schema once, before any image is read."""
    image: str
    caption: str
    kind: str  # image_kind's answer
    key: Optional[str]
    passthrough: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([self.image, self.caption, *([self.key] if self.key else []),
                                   *self.passthrough]))


def choose_columns(schema: pa.Schema, where: str, image_column: Optional[str], caption_column: Optional[str],
                   passthrough: Sequence[str]) -> Columns:
    names = schema.names
    image = pick_column(names, image_column, IMAGE_COLUMNS, "input.image_column", where)
    caption = pick_column(names, caption_column, CAPTION_COLUMNS, "input.caption_column", where)
    for column in passthrough:
        pick_column(names, column, (), "input.passthrough", where)
    kind = image_kind(schema, image, where)
    check_caption_type(schema, caption, where)
    return Columns(image, caption, kind, "key" if "key" in names else None, tuple(passthrough))


def resolve(path: str, base: str) -> str:
    """A relative image path is relative to the table's folder (local or remote)."""
    path = os.path.expanduser(path)
    if is_remote(path) or os.path.isabs(path):
        return path
    return f"{base.rstrip('/')}/{path}" if is_remote(base) else os.path.join(base, path)


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def row_sample(row: dict, cols: Columns, base: str, fallback_key: str) -> Sample:
    """One table row as a Sample; raises (costing that item only) when its image or caption is missing."""
    value, caption = row[cols.image], row[cols.caption]
    if value is None:  # img2dataset's row of a failed download: no image, no caption
        raise ValueError(f"no image (null in column {cols.image!r})")
    if caption is None:
        raise ValueError("no caption (null)")
    path = value if cols.kind == "path" else value.get("path") if cols.kind == "struct" else None
    data = value if cols.kind == "bytes" else value.get("bytes") if cols.kind == "struct" else None
    if data is None:
        if not path:
            raise ValueError(f"no image (neither bytes nor path in column {cols.image!r})")
        data = read_bytes(resolve(path, base))
    if cols.key and row[cols.key] is not None:
        key = str(row[cols.key])
    else:
        key = str(PurePosixPath(path).with_suffix("")) if path else fallback_key
    return Sample(key, data, str(caption).strip(), {c: row[c] for c in cols.passthrough})
