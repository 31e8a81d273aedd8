"""The predict loop's writer: collects each piece's codes as its batches arrive and commits its shard once
the last of its tasks is in; after the loop, one report for the whole run (written by global rank 0).

Rows are written in the piece's own order (by position), not in the order batches came from the workers,
so a shard does not depend on how many workers or processes made it. A streamed piece that could not be
read is not written: a note `NAME.parquet.failed.json` records why, the report lists it, and every rank
ends the run with an error, so the command exits non-zero and its rerun retries just those pieces.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
from pytorch_lightning.callbacks import BasePredictionWriter
from tqdm import tqdm

from .shard_files import FAILED_SUFFIX, OutputDir, shard_table, write_report, write_shard


class EncodingIncomplete(RuntimeError):
    """Some pieces could not be read; the others are written."""


@dataclass
class PieceBuffer:
    tasks_done: int = 0
    count: int = 0
    good: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    codes: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    failed: Optional[str] = None

    def add(self, batch: dict, codes: Optional[np.ndarray]) -> None:
        self.count += len(batch["positions"])
        self.good += batch["good"]
        self.rows += batch["rows"]
        self.errors += batch["errors"]
        if codes is not None:
            self.codes.append(codes)


class ShardCollector(BasePredictionWriter):
    def __init__(self, out: OutputDir, run: dict, passthrough, row_group_size: int, code_type: pa.DataType,
                 progress: bool = True):
        super().__init__(write_interval="batch")
        self.out, self.run, self.passthrough = out, run, list(passthrough)
        self.row_group_size, self.code_type, self.progress = row_group_size, code_type, progress
        self.buffers: dict[int, PieceBuffer] = {}
        self.plan = self.bar = self.exception = self.report = None

    def on_predict_start(self, trainer, pl_module) -> None:
        self.plan = trainer.datamodule.plan
        total = self.plan.known_items
        self.bar = tqdm(total=total, unit="img", smoothing=0.1, disable=not (self.progress and
                                                                           trainer.is_global_zero))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        k = batch["piece"]
        buf = self.buffers.setdefault(k, PieceBuffer())
        if batch["failed"] is not None:
            buf.failed = batch["failed"]
        else:
            buf.add(batch, prediction)
        buf.tasks_done += batch["last"]
        self.bar.update(len(batch["positions"]))
        if buf.tasks_done == self.plan.tasks_per_piece[k]:
            self._finish(k, self.buffers.pop(k))

    def _finish(self, k: int, buf: PieceBuffer) -> None:
        piece = self.plan.pieces[k]
        if buf.failed is not None:
            print(f"[rank {self.plan.rank}] {piece.source}: could not be read ({buf.failed}); "
                  f"{piece.file} is not written", file=sys.stderr)
            self.out.write_json(piece.file + FAILED_SUFFIX,
                                {"shard": piece.file, "source": piece.source, "error": buf.failed})
            return
        order = np.argsort(buf.good, kind="stable")
        codes = np.concatenate(buf.codes) if buf.codes else np.zeros((0, self.run["codes_per_image"]),
                                                                        np.int64)
        meta = {"run": self.run, "source": piece.source, "count": buf.count,
                "skipped": [{"item": name, "error": e} for _, name, e in sorted(buf.errors)],
                "passthrough": self.passthrough}
        table = shard_table([buf.rows[i] for i in order], codes[order], meta, self.code_type)
        write_shard(self.out, piece.file, table, self.row_group_size)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.bar.close()
        if self.buffers:  # the loader ended before some task did: a bug, never a silent gap
            raise RuntimeError(f"pieces {sorted(self.buffers)} did not receive all their batches")
        trainer.strategy.barrier("shards written")
        if trainer.is_global_zero:
            write_report(self.out, [p.file for p in self.plan.pieces])
        trainer.strategy.barrier("report written")
        self.report = self.out.read_json("report.json")
        if self.report["missing"]:
            failed = "; ".join(f"{f['source']}: {f['error']}" for f in self.report["failed"][:5])
            raise EncodingIncomplete(
                f"{len(self.report['missing'])} of {len(self.plan.pieces)} shards are not written "
                f"({failed}). The other shards are complete; run the same command again to retry these "
                f"(a file that is corrupt: fetch it again). Listed in {self.out.display('report.json')}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.exception = exception
        if self.bar is not None:
            self.bar.close()
