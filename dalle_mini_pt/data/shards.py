"""Encoded parquet shards: finding them, opening them for streaming, and checking what they hold.

A shard holds a `caption` string column and an `encoding` list column of `image_length` VQGAN code ids
(row-major), the reference's format, plus any passthrough columns (key, clip_score, ...). Files may be local
paths or fsspec URLs (`s3://bucket/train/*.parquet`, `gs://...`, `hf://datasets/ORG/NAME/...`,
`http://host/dir/*.parquet` where the server lists the directory); globs and directories are expanded.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional, Sequence, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

Files = Union[str, Sequence[str]]
# the schema-metadata key under which the encoder tool records its run (VQGAN size, pixel range, items)
META_KEY = b"dalle_mini_pt.encode"
_GLOB_CHARS = "*?["
# bytes pyarrow reads from a column chunk at a time when it streams a row group (see open_parquet)
READ_BUFFER = 1 << 20
# remote files (fsspec): aligned 2 MiB blocks, the last 4 kept. pyarrow reads the caption and the code
# columns in turn, and fsspec's default single read-ahead buffer, dropped at each switch, fetched most of a
# file twice; with a few blocks each column finds its own. Local files ignore these options.
REMOTE_CACHE = {"cache_type": "blockcache", "block_size": 2 << 20, "cache_options": {"maxblocks": 4}}


def _expand(pattern: str) -> list[str]:
    """One pattern -> matching parquet files; local paths stay plain paths, remote ones keep their
    protocol."""
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(pattern))
    local = "://" not in pattern
    if any(c in path for c in _GLOB_CHARS):
        paths = glob.glob(path) if local else fs.glob(path)
    elif path.endswith(".parquet"):  # before isdir: over HTTP that would fetch the file to look for links
        paths = [path] if fs.exists(path) else []
    elif fs.isdir(path):
        paths = fs.glob(path.rstrip("/") + "/*.parquet")
    else:
        paths = [path] if fs.exists(path) else []
    return [p if local else fs.unstrip_protocol(p) for p in paths]


def resolve_files(files: Files, key: str) -> list[str]:
    """Expand globs and directories; fail naming the config key when nothing matches."""
    patterns = [files] if isinstance(files, str) else [str(f) for f in files]
    found = sorted({f for p in patterns for f in _expand(p)})
    if not found:
        raise FileNotFoundError(
            f"{key}={patterns!r} matches no file. Point {key} at your encoded parquet shards (made by "
            "`python -m dalle_mini_pt.data.encode`), or make the small demo set with "
            "`python -m dalle_mini_pt.data.tiny_dataset --out data/tiny`.")
    return found


def open_parquet(url: str) -> pq.ParquetFile:
    """The file with its footer read; a file that is empty, cut off or not parquet fails naming itself.

    Opened for streaming: pyarrow's `pre_buffer` (its default) fetches a whole row group's column chunks
    before decoding the first row; without it, column pages are read through a `READ_BUFFER`-sized buffer
    as `iter_batches` decodes them, so reading a slice of a row group holds about that slice."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return pq.ParquetFile(fs.open(path, "rb", **REMOTE_CACHE), pre_buffer=False, buffer_size=READ_BUFFER)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{url}: not a readable parquet file ({type(err).__name__}: {err}); it is empty, "
                         "cut off or not parquet. Encode it again, or take it out of the file list") from None


def check_types(schema: pa.Schema, path: str, caption_column: str, encoding_column: str) -> None:
    """Captions must be text and codes lists of integers: an integer caption column would fail in the
    tokenizer, and float codes would be truncated to other codes without a word."""
    caption = schema.field(caption_column).type
    if not (pa.types.is_string(caption) or pa.types.is_large_string(caption)):
        raise ValueError(f"{path}: column {caption_column!r} holds {caption}, not text. Captions must be "
                         "strings: cast the column (pyarrow.compute.cast(column, pyarrow.string())) and "
                         "write the shard again")
    codes = schema.field(encoding_column).type
    nested = pa.types.is_list(codes) or pa.types.is_large_list(codes) or pa.types.is_fixed_size_list(codes)
    if not (nested and pa.types.is_integer(codes.value_type)):
        raise ValueError(f"{path}: column {encoding_column!r} holds {codes}, not lists of integer codes "
                         "(float values would be truncated to other codes). Encode the images again with "
                         "`python -m dalle_mini_pt.data.encode`")


def check_no_null_captions(pf: pq.ParquetFile, path: str, column: str) -> None:
    """From the row groups' statistics (footer only), so every shard is checked before training; a row group
    without statistics is checked as it streams (`null_caption`)."""
    leaf = [pf.metadata.schema.column(i).path for i in range(pf.metadata.num_columns)].index(column)
    start = 0
    for rg in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(rg).column(leaf).statistics
        if stats is not None and stats.has_null_count and stats.null_count:
            nulls = pf.read_row_group(rg, columns=[column]).column(0).is_null().to_numpy(zero_copy_only=False)
            null_caption(path, start + int(np.argmax(nulls)), column)
        start += pf.metadata.row_group(rg).num_rows


def check_pixel_range(pf: pq.ParquetFile, path: str, expected: Optional[str]) -> None:
    """Codes of a VQGAN fed [-1, 1] pixels mean other pictures than those of one fed [0, 1]: shards that
    record the range they were encoded with must match the model's `vqgan_pixel_range`."""
    metadata = pf.schema_arrow.metadata or {}
    run = json.loads(metadata[META_KEY]).get("run", {}) if META_KEY in metadata else {}
    recorded = run.get("pixel_range")
    if expected and recorded and recorded != expected:
        raise ValueError(f"{path} was encoded by a VQGAN fed {recorded} pixels, but the model learns codes "
                         f"of one fed {expected} (model.net.config.vqgan_pixel_range). Encode again with the "
                         f"model's VQGAN (vqgan.config.pixel_range={expected}), or set "
                         f"model.net.config.vqgan_pixel_range={recorded} for a model trained from scratch")


def null_caption(path: str, row: int, column: str):
    raise ValueError(f"{path} row {row}: the {column!r} is null. A null is not the empty caption (that one "
                     "is data.blank_caption_prob's job): drop or fill those rows, e.g. "
                     f"table.filter(pyarrow.compute.is_valid(table[{column!r}])), and write the shard again")


def check_columns(names: Sequence[str], path: str, columns: dict[str, str]) -> None:
    """`columns` maps config key -> column name the config expects in every shard."""
    for key, column in columns.items():
        if column not in names:
            raise ValueError(f"{path}: no column {column!r} (has {list(names)}); set {key} to the right name")


def check_codes(path: str, encodings: Union[pa.Array, pa.ChunkedArray], image_length: int,
                codebook_size: int, first_row: int = 0) -> np.ndarray:
    """A list column of codes -> (rows, image_length) int64, or an error naming the file, the row and the
    fix."""
    arr = encodings.combine_chunks() if isinstance(encodings, pa.ChunkedArray) else encodings
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != image_length)
    if bad.size:
        raise ValueError(f"{path} row {first_row + bad[0]}: {lengths[bad[0]]} codes, the model expects "
                         f"image_length={image_length}; re-encode with the model's VQGAN or fix "
                         "model.net.config.image_length")
    codes = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.int64).reshape(-1, image_length)
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        row = int(np.argmax((codes < 0).any(1) | (codes >= codebook_size).any(1)))
        raise ValueError(f"{path} row {first_row + row}: codes outside the codebook 0..{codebook_size - 1} "
                         f"(min {codes.min()}, max {codes.max()}); the shards were encoded with another "
                         "VQGAN or model.net.config.codebook_size is wrong")
    return codes
