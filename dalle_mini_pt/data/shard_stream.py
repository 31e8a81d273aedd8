"""An IterableDataset that streams tokenised training batches out of encoded parquet shards.

The order of rows comes from `stream_plan` (sharded by rank and worker, per-epoch reshuffle, shuffle buffer),
the rows from `RowReader`; this file turns them into batches: filters were applied when the index was built,
then the text normaliser, `blank_caption_prob`, and tokenisation to the fixed text length, as the reference's
`Dataset.preprocess` does. Batches are made inside the workers (the DataLoader runs with batch_size=None).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..tokenizer import TextTokenizer
from . import stream_plan
from .row_reader import RowReader
from .shard_index import ShardIndex
from .stream_position import StreamPosition
from .stream_spec import StreamSpec


class ShardStream(IterableDataset):
    """Batches {input_ids, attention_mask, labels} of one rank, as `spec` says. Each pass starts where
    `position` stands when it begins (its epoch, and the batches of it already consumed); the stream never
    moves the position itself."""

    def __init__(self, index: ShardIndex, spec: StreamSpec, tokenizer: TextTokenizer,
                 normalizer: Optional[Callable[[str], str]] = None,
                 position: Optional[StreamPosition] = None):
        super().__init__()
        self.index, self.spec, self.tokenizer, self.normalizer = index, spec, tokenizer, normalizer
        self.position = position if position is not None else StreamPosition()

    def worker_batch_counts(self) -> list[int]:
        return stream_plan.rank_batch_counts(self.index.num_rows, self.spec)

    def __len__(self) -> int:
        """Batches per epoch on this rank (every rank has the same number)."""
        return sum(self.worker_batch_counts())

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.spec.workers:
            raise RuntimeError(f"ShardStream was built for {self.spec.workers} workers but runs in "
                               f"{info.num_workers}; build it with the DataLoader's num_workers")
        epoch, consumed = self.position.epoch, self.position.batches  # a worker's copy: this pass's start
        skips, first = stream_plan.resume_point(consumed, self.worker_batch_counts())
        role = (worker + first) % self.spec.workers  # see resume_point: continues the round-robin
        plan = stream_plan.worker_plan(self.index.counts, self.spec, epoch=epoch, worker=role)
        skip, size = skips[role], self.spec.batch_size
        pending = np.zeros(len(plan.order), dtype=bool)
        pending[plan.order[skip * size:]] = True
        reader = RowReader(self.index, plan.segments, pending, self.spec)
        # drawn per position in the worker's order, so a resumed epoch blanks the same captions
        rng = np.random.default_rng([self.spec.seed, epoch, self.spec.rank, role, stream_plan.BLANK_STREAM])
        blank = rng.random(len(plan.order)) < self.spec.blank_caption_prob
        for b in range(skip, plan.num_batches):
            positions = plan.order[b * size:(b + 1) * size]
            rows = [reader.take(int(p)) for p in positions]
            yield self.collate(rows, blank[positions])

    def collate(self, rows: list[tuple[str, np.ndarray]], blank: np.ndarray) -> dict[str, torch.Tensor]:
        captions = [caption for caption, _ in rows]
        if self.normalizer is not None:
            captions = [self.normalizer(c) for c in captions]
        captions = ["" if b else c for c, b in zip(captions, blank.tolist())]
        enc = self.tokenizer(captions)
        labels = torch.from_numpy(np.stack([codes for _, codes in rows]).astype(np.int64))
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
