"""An IterableDataset that streams tokenised training batches out of encoded parquet shards.

The order of rows comes from `stream_plan` (sharded by rank and worker, per-epoch reshuffle, shuffle buffer);
this file reads the rows and turns them into batches: filters were applied when the index was built, then
the text normaliser, `blank_caption_prob`, and tokenisation to the fixed text length, as the reference's
`Dataset.preprocess` does. Batches are made inside the workers (the DataLoader runs with batch_size=None).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..tokenizer import TextTokenizer
from . import stream_plan
from .shards import ShardIndex, check_codes, null_caption, open_parquet


class RowReader:
    """Reads a segment's row group when its first row is due and keeps only the rows still to be emitted,
    so memory stays near the shuffle buffer's size."""

    def __init__(self, index: ShardIndex, segments: list[stream_plan.Segment], pending: np.ndarray,
                 columns: tuple[str, str], image_length: int, codebook_size: int):
        self.index, self.segments, self.pending = index, segments, pending
        self.starts = np.array([s.start for s in segments], dtype=np.int64)
        self.columns, self.image_length, self.codebook_size = columns, image_length, codebook_size
        self.rows: dict[int, tuple[str, np.ndarray]] = {}
        self._open: tuple[Optional[int], object] = (None, None)

    def take(self, position: int) -> tuple[str, np.ndarray]:
        if position not in self.rows:
            self._load(self.segments[int(np.searchsorted(self.starts, position, side="right")) - 1])
        return self.rows.pop(position)

    def _parquet(self, file: int):
        if self._open[0] != file:  # one open file per worker; chunks of a file tend to come together
            self._open = (file, open_parquet(self.index.files[file]))
        return self._open[1]

    def _load(self, seg: stream_plan.Segment) -> None:
        chunk = self.index.chunks[seg.chunk]
        path, pf = self.index.files[chunk.file], self._parquet(chunk.file)
        caption_column, encoding_column = self.columns
        table = pf.read_row_group(chunk.row_group, columns=[caption_column, encoding_column])
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(chunk.row_group))
        try:
            codes = check_codes(path, table.column(encoding_column), self.image_length, self.codebook_size,
                                first_row)
        except ValueError as err:
            raise ValueError(f"{self.index.key}: {err}") from None
        captions = table.column(caption_column).to_pylist()
        local = chunk.rows[seg.lo:seg.hi] if chunk.rows is not None else range(seg.lo, seg.hi)
        for i, row in enumerate(local):
            if self.pending[seg.start + i]:
                if captions[row] is None:  # only where the footer had no statistics to check up front
                    null_caption(path, first_row + row, caption_column)
                self.rows[seg.start + i] = (captions[row], codes[row])


class ShardStream(IterableDataset):
    """Batches {input_ids, attention_mask, labels} of one rank. `start(epoch, consumed)` picks the epoch
    and how many of its batches the consumer already has; call it before iterating (workers copy it)."""

    def __init__(self, index: ShardIndex, tokenizer: TextTokenizer, *, image_length: int, codebook_size: int,
                 batch_size: int, rank: int, world_size: int, num_workers: int, shuffle: bool, seed: int = 0,
                 shuffle_buffer: int = 5000, drop_last: bool = True, blank_caption_prob: float = 0.0,
                 normalizer: Optional[Callable[[str], str]] = None,
                 columns: tuple[str, str] = ("caption", "encoding")):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.index, self.tokenizer, self.normalizer = index, tokenizer, normalizer
        self.image_length, self.codebook_size, self.columns = image_length, codebook_size, columns
        self.batch_size, self.drop_last = batch_size, drop_last
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.blank_caption_prob = blank_caption_prob
        self.epoch, self.consumed = 0, 0

    def start(self, epoch: int, consumed: int = 0) -> None:
        self.epoch, self.consumed = epoch, consumed

    def worker_batch_counts(self) -> list[int]:
        return stream_plan.rank_batch_counts(self.index.num_rows, self.world_size, self.batch_size,
                                             self.num_workers, self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch on this rank (every rank has the same number)."""
        return sum(self.worker_batch_counts())

    def plan(self, worker: int) -> stream_plan.WorkerPlan:
        return stream_plan.worker_plan(
            self.index.counts, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size,
            worker=worker, num_workers=self.num_workers, batch_size=self.batch_size, drop_last=self.drop_last,
            shuffle=self.shuffle, buffer_size=self.shuffle_buffer)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"ShardStream was built for {self.num_workers} workers but runs in "
                               f"{info.num_workers}; build it with the DataLoader's num_workers")
        skips, first = stream_plan.resume_point(self.consumed, self.worker_batch_counts())
        role = (worker + first) % self.num_workers  # see resume_point: continues the round-robin
        plan, skip = self.plan(role), skips[role]
        pending = np.zeros(len(plan.order), dtype=bool)
        pending[plan.order[skip * self.batch_size:]] = True
        reader = RowReader(self.index, plan.segments, pending, self.columns, self.image_length,
                           self.codebook_size)
        # drawn per position in the worker's order, so a resumed epoch blanks the same captions
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, role, stream_plan.BLANK_STREAM])
        blank = rng.random(len(plan.order)) < self.blank_caption_prob
        for b in range(skip, plan.num_batches):
            positions = plan.order[b * self.batch_size:(b + 1) * self.batch_size]
            rows = [reader.take(int(p)) for p in positions]
            yield self.collate(rows, blank[positions])

    def collate(self, rows: list[tuple[str, np.ndarray]], blank: np.ndarray) -> dict[str, torch.Tensor]:
        captions = [caption for caption, _ in rows]
        if self.normalizer is not None:
            captions = [self.normalizer(c) for c in captions]
        captions = ["" if b else c for c, b in zip(captions, blank.tolist())]
        enc = self.tokenizer(captions)
        labels = torch.from_numpy(np.stack([codes for _, codes in rows]))
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
