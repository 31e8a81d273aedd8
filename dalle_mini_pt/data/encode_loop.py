"""Encoding as a Lightning predict loop: the VQGAN as a LightningModule, the plan and the input pipeline as a
LightningDataModule. Lightning starts the processes (its DDP launcher, torchrun, SLURM, a TPU VM's
spawn) exactly as for training, with the same `trainer=` groups.

The plan is made once, by global rank 0, after the processes have met: it lists the pieces, removes what
a killed run left half-written, reads the footers of the shards already in output_dir (checking they are
this run's), and broadcasts the pending pieces (`index_sharing.built_once`, as streaming shares its index;
a failure on rank 0 reaches every rank); each rank then takes its share (`encode_plan`). Rank 0 planning
alone means no rank can see another's freshly written shard as "already done".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from .encode_plan import Piece, pending_pieces, plan_pieces, tasks_for, tasks_per_piece
from .encode_stream import TaskStream, identity_collate
from .index_sharing import built_once
from .shard_files import OutputDir


class CodeEncoder(pl.LightningModule):
    def __init__(self, vqgan):
        super().__init__()
        self.vqgan = vqgan

    def predict_step(self, batch: dict, batch_idx: int):
        if batch["images"] is None:
            return None
        # the codes of the real images: on XLA the batch came padded (see EncodeData), cut on the host
        return self.vqgan.encode(batch["images"]).cpu()[:len(batch["good"])].numpy()


@dataclass(frozen=True)
class RankPlan:
    pieces: list[Piece]
    rank: int
    tasks: list[tuple[int, int, int]]
    tasks_per_piece: dict[int, int]

    @property
    def known_items(self) -> Optional[int]:
        """Items of this rank's pieces, when all are indexed (a streamed piece's count is known once read)."""
        mine = {k for k, _, _ in self.tasks}
        if any(self.pieces[k].streamed for k in mine):
            return None
        return sum(self.pieces[k].stop - self.pieces[k].start for k in mine)


def plan_run(source, out: OutputDir, run: dict, shard_size: int) -> tuple[list[Piece], list[int]]:
    out.makedirs()
    out.remove_stale()
    pieces = plan_pieces(source, shard_size)
    return pieces, pending_pieces(out, pieces, run)


class EncodeData(pl.LightningDataModule):
    def __init__(self, source, out: OutputDir, run: dict, shard_size: int, batch_size: int, num_workers: int):
        super().__init__()
        self.source, self.out, self.run = source, out, run
        self.shard_size, self.batch_size, self.num_workers = shard_size, batch_size, num_workers
        self.plan: Optional[RankPlan] = None

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        # a plan rank 0 fails to make reaches every rank as its error, instead of leaving them waiting
        broadcast = trainer.strategy.broadcast if trainer.world_size > 1 else None
        pieces, pending = built_once(lambda: plan_run(self.source, self.out, self.run, self.shard_size),
                                     trainer.global_rank, broadcast)
        mine = plan_pieces(self.source, self.shard_size)
        if mine != pieces:
            raise ValueError(f"rank {trainer.global_rank} sees other input than rank 0 ({len(mine)} pieces "
                             f"vs {len(pieces)}): every process must read the same input.path")
        tasks = tasks_for(pieces, pending[trainer.global_rank::trainer.world_size], self.batch_size)
        self.plan = RankPlan(pieces, trainer.global_rank, tasks, tasks_per_piece(tasks))

    def predict_dataloader(self) -> DataLoader:
        device = self.trainer.strategy.root_device.type
        # XLA compiles a graph per batch shape: batches short of bad images or at a piece's end are padded
        stream = TaskStream(self.source, self.plan.pieces, self.plan.tasks, self.run["resolution"],
                            self.batch_size, pad=device == "xla")
        workers = min(self.num_workers, len(self.plan.tasks))  # no idle worker processes
        pin = device == "cuda"
        return DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=identity_collate,
                          pin_memory=pin)
