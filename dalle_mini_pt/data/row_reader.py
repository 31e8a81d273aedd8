"""RowReader: one worker's rows, read a slice of a row group at a time as the shuffle buffer asks for them.

A worker's plan lays its segments (kept rows lo..hi of one row group) end to end as stream positions, and
the shuffle buffer asks for positions in nearly increasing order. So the reader walks the segments with a
single cursor, `SLICE_ROWS` rows at a time (`ParquetFile.iter_batches` on a file opened without
pre-buffering, see `shards.open_parquet`), and holds only the rows read but not yet taken: about the
shuffle buffer plus one slice, however large the row groups. (The reference's encoding notebook wrote one
row group of 131 072 rows per file; read whole, one such group is 270 MB of int64 codes.)

A row group is read from its start: parquet has no seek to a row inside it, so a segment that begins
part-way through (a rank's or worker's boundary) decodes the slices before it and keeps nothing of them.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from . import stream_plan
from .shard_index import ShardIndex
from .shards import check_codes, null_caption, open_parquet
from .stream_spec import StreamSpec

# rows decoded at once: 2 MiB of int64 codes at 256 codes a row
SLICE_ROWS = 1024


class RowReader:
    """`take(position)` -> (caption, codes) of that stream position of the worker, each exactly once.
    `pending[p]` is False for positions already consumed before a resume: those are never kept."""

    def __init__(self, index: ShardIndex, segments: list[stream_plan.Segment], pending: np.ndarray,
                 spec: StreamSpec):
        self.index, self.segments, self.pending, self.spec = index, segments, pending, spec
        # codes are kept in the smallest type that holds the codebook (uint16 for 16384 codes)
        self.dtype = np.min_scalar_type(max(spec.codebook_size - 1, 0))
        self.rows: dict[int, tuple[str, np.ndarray]] = {}
        self._cursor = self._walk()
        self._open: tuple = (None, None)

    def take(self, position: int) -> tuple[str, np.ndarray]:
        while position not in self.rows:
            if next(self._cursor, StopIteration) is StopIteration:
                raise RuntimeError(f"stream position {position} is not a pending row of this worker's plan")
        return self.rows.pop(position)

    def _walk(self) -> Iterator[None]:
        """Reads the segments in order, one slice per step."""
        for seg in self.segments:
            if self.pending[seg.start:seg.start + seg.hi - seg.lo].any():  # else all taken before a resume
                yield from self._read_segment(seg)

    def _parquet(self, file: int):
        if self._open[0] != file:  # one open file per worker: a file's chunks tend to come together
            self._open = (file, open_parquet(self.index.files[file]))
        return self._open[1]

    def _read_segment(self, seg: stream_plan.Segment) -> Iterator[None]:
        chunk = self.index.chunks[seg.chunk]
        pf = self._parquet(chunk.file)
        wanted = chunk.rows[seg.lo:seg.hi] if chunk.rows is not None else np.arange(seg.lo, seg.hi)
        group_start = sum(pf.metadata.row_group(g).num_rows for g in range(chunk.row_group))
        first = 0  # the slice's first row within the row group
        for batch in pf.iter_batches(batch_size=SLICE_ROWS, row_groups=[chunk.row_group],
                                     columns=list(self.spec.columns), use_threads=False):
            lo, hi = (int(i) for i in np.searchsorted(wanted, [first, first + batch.num_rows]))
            if hi > lo:
                self._keep(seg, batch, wanted, (lo, hi), first, group_start)
                yield
            if hi == len(wanted):
                return  # the rest of the row group belongs to another segment
            first += batch.num_rows

    def _keep(self, seg: stream_plan.Segment, batch: pa.RecordBatch, wanted: np.ndarray,
              span: tuple[int, int], first: int, group_start: int) -> None:
        """Rows wanted[span[0]:span[1]] of the segment, which lie in `batch` (row-group rows from `first`)."""
        path = self.index.files[self.index.chunks[seg.chunk].file]
        caption_column, encoding_column = self.spec.columns
        try:
            codes = check_codes(path, batch.column(encoding_column), self.spec.image_length,
                                self.spec.codebook_size, group_start + first)
        except ValueError as err:
            raise ValueError(f"{self.index.key}: {err}") from None
        captions = batch.column(caption_column)
        for j in range(*span):
            if self.pending[seg.start + j]:
                row = int(wanted[j]) - first
                caption = captions[row].as_py()
                if caption is None:  # only where the footer had no statistics to check up front
                    null_caption(path, group_start + first + row, caption_column)
                # a copy, so a row waiting in the shuffle buffer does not keep its whole slice alive
                self.rows[seg.start + j] = (caption, codes[row].astype(self.dtype))
