"""Checkpoints that survive being killed: written atomically, and saved when the scheduler says stop.

Lightning's own save goes through an fsspec transaction, which writes a temporary file in $TMPDIR and moves it
into place: across filesystems that move is a copy, so a kill during it left a 0-byte `last.ckpt`. Here the
temporary file sits beside the target and `os.replace` (atomic within one filesystem) puts it into place.
SIGTERM (what SLURM, preemptible TPU VMs and spot GPUs send) makes Lightning stop after the current batch;
`PreemptionCheckpoint` saves that step, and `ckpt_path=last` resumes from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.plugins.io.xla import XLACheckpointIO
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException


def _is_local(path) -> bool:
    return "://" not in str(path)


def write_atomically(path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it into place: a kill at any moment
    leaves the previous file whole. Temporaries of killed writers are swept first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _torch_save(checkpoint: dict, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file in the checkpoint's own directory, then rename it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None
                        ) -> None:
        if not _is_local(path):  # object stores: their upload is whole-or-nothing already
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(path, lambda tmp: _torch_save(checkpoint, tmp))


class AtomicXLACheckpointIO(XLACheckpointIO):
    """The same on TPUs (the XLA strategy takes only an XLACheckpointIO): torch-xla's save, which moves the
    tensors to the CPU, into the temporary file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None
                        ) -> None:
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(path, lambda tmp: super(AtomicXLACheckpointIO, self).save_checkpoint(
            checkpoint, tmp, storage_options))


class PreemptionCheckpoint(OnExceptionCheckpoint):
    """Saves `preempted.ckpt` in the checkpoint directory when SIGTERM stops the run (not on other errors,
    whose cause a checkpoint would not fix). Lightning's `ckpt_path=last` takes it when it is the newest;
    a run that later finishes removes it."""

    def __init__(self, dirpath, filename: str = "preempted") -> None:
        super().__init__(dirpath, filename)
        self.saved: Optional[str] = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)
            self.saved = self.ckpt_path
