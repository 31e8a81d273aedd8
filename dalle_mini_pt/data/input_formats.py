"""`input.format` -> the source that reads it (see conf/encode.yaml for each format's keys)."""

from __future__ import annotations

from typing import Optional, Sequence

from .image_sources import FolderSource
from .table_source import TableSource
from .tar_source import TarSource

FORMATS = ("folder", "tar", "table", "hf")


def open_source(format: str, path, passthrough: Sequence[str] = (), image_column: Optional[str] = None,
                caption_column: Optional[str] = None, split: str = "train", streaming: bool = False,
                cache_dir: Optional[str] = None):
    """folder: img2dataset `files` output; tar: webdataset shards (img2dataset `webdataset`); table:
    parquet/CSV/TSV of image paths or bytes (img2dataset `parquet`); hf: a Hugging Face dataset."""
    passthrough = list(passthrough)
    if format == "folder":
        return FolderSource(path, passthrough)
    if format == "tar":
        return TarSource(path, passthrough)
    if format == "table":
        return TableSource(path, image_column, caption_column, passthrough)
    if format == "hf":
        from .hf_source import open_hf  # `datasets` is an optional dependency, and a slow import

        return open_hf(str(path), split, streaming, cache_dir, image_column, caption_column, passthrough)
    raise ValueError(f"input.format={format!r}: use folder (img2dataset files output), tar (webdataset "
                     "shards), table (parquet/CSV of image paths or bytes, e.g. img2dataset's parquet "
                     "output) or hf (a Hugging Face dataset)")
