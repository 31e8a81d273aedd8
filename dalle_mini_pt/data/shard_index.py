"""The index of a set of encoded shards: every row group ("chunk") with the rows the filters keep.

Only footers and filter columns are read, so the index knows every chunk's kept-row count without reading
the codes, which is what lets ranks split an epoch into exactly equal parts. Footers are read by a pool of
threads (they are small reads, mostly waiting on storage), and every shard's schema is checked on the way;
the codes are checked as they stream, naming file and row, and the first slice of the first file now, so
shards of another VQGAN fail before the model is built. `index_sharing` makes it once per run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from .shards import (
    check_codes,
    check_columns,
    check_no_null_captions,
    check_pixel_range,
    check_types,
    open_parquet,
)
from .stream_spec import StreamSpec

# footers read at once: enough to hide a bucket's latency, few enough for any host's connection pool
FOOTER_THREADS = 16
# rows of the first file whose codes are checked before training starts
FIRST_CHECK_ROWS = 256


@dataclass(frozen=True)
class RowFilter:
    """Keep rows whose CLIP score lies in [min_clip_score, max_clip_score] and whose `column == value`
    (each part only when set), as the reference's `filter_function`."""

    min_clip_score: Optional[float] = None
    max_clip_score: Optional[float] = None
    clip_score_column: str = "clip_score"
    column: Optional[str] = None
    value: object = None

    @property
    def columns(self) -> dict[str, str]:
        """config key -> column this filter reads."""
        used = {}
        if self.min_clip_score is not None or self.max_clip_score is not None:
            used["data.clip_score_column"] = self.clip_score_column
        if self.column is not None:
            used["data.filter_column"] = self.column
        return used

    def mask(self, table: pa.Table) -> Optional[np.ndarray]:
        if not self.columns:
            return None
        keep = np.ones(table.num_rows, dtype=bool)
        if self.columns.get("data.clip_score_column"):
            score = table.column(self.clip_score_column).to_numpy(zero_copy_only=False).astype(np.float64)
            keep &= ~np.isnan(score)  # a row without a score cannot pass a score filter
            if self.min_clip_score is not None:
                keep &= score >= self.min_clip_score
            if self.max_clip_score is not None:
                keep &= score <= self.max_clip_score
        if self.column is not None:
            keep &= np.asarray(table.column(self.column).to_pylist(), dtype=object) == self.value
        return keep


@dataclass
class Chunk:
    """One parquet row group: the unit that is shuffled and assigned to ranks (and read in slices)."""

    file: int
    row_group: int
    rows: Optional[np.ndarray]  # kept row indices within the row group; None = all of them
    count: int  # rows kept


class ShardIndex:
    """Chunks of `files` in file and row-group order, with `counts` (kept rows per chunk). `key` is the
    config key the files came from, for error messages."""

    def __init__(self, files: list[str], key: str, chunks: list[Chunk]):
        self.files, self.key, self.chunks = files, key, chunks
        self.counts = np.array([c.count for c in chunks], dtype=np.int64)

    @property
    def num_rows(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def build(cls, files: list[str], key: str, spec: StreamSpec, row_filter: RowFilter,
              pixel_range: Optional[str] = None) -> ShardIndex:
        """Read and check every footer (in parallel), then the first codes; errors name `key`."""
        columns = {"data.caption_column": spec.caption_column, "data.encoding_column": spec.encoding_column}

        def file_chunks(i: int) -> list[Chunk]:
            return _file_chunks(i, files[i], spec, {**columns, **row_filter.columns}, row_filter, pixel_range)

        try:
            with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
                chunks = [c for per_file in pool.map(file_chunks, range(len(files))) for c in per_file]
            _check_first_codes(files[0], spec)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
        return cls(files, key, chunks)


def _file_chunks(i: int, path: str, spec: StreamSpec, columns: dict[str, str], row_filter: RowFilter,
                 pixel_range: Optional[str]) -> list[Chunk]:
    pf = open_parquet(path)
    check_columns(pf.schema_arrow.names, path, columns)
    check_types(pf.schema_arrow, path, spec.caption_column, spec.encoding_column)
    check_no_null_captions(pf, path, spec.caption_column)
    check_pixel_range(pf, path, pixel_range)
    mask = row_filter.mask(pf.read(columns=sorted(set(row_filter.columns.values())))) \
        if row_filter.columns else None
    chunks, start = [], 0
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        rows = None if mask is None else np.flatnonzero(mask[start:start + n])
        chunks.append(Chunk(i, rg, rows, n if rows is None else len(rows)))
        start += n
    return chunks


def _check_first_codes(path: str, spec: StreamSpec) -> None:
    """Shards of the wrong VQGAN or model fail here, before training starts, not at their first batch."""
    pf = open_parquet(path)
    if pf.metadata.num_row_groups:  # later row groups are checked as they stream, naming their rows
        first = next(pf.iter_batches(batch_size=FIRST_CHECK_ROWS, row_groups=[0],
                                     columns=[spec.encoding_column]), None)
        if first is not None:
            check_codes(path, first.column(0), spec.image_length, spec.codebook_size)
