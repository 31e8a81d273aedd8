"""The DalleBart LightningModule: caption tokens + image codes -> loss, with the optimizer and schedule from
Hydra."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch

from ..config import DalleBartConfig
from ..hub.lightning import CONFIG_KEY
from ..model import DalleBart
from .optimization import lightning_optimizers, param_groups


def batch_size(batch: dict) -> int:
    return batch["labels"].shape[0]


def batch_image_tokens(batch: dict) -> int:
    """Decoder tokens in a batch: what 'tokens/s' counts (ThroughputMonitor's items)."""
    return batch["labels"].numel()


class DalleBartModule(pl.LightningModule):
    def __init__(
        self,
        net: DalleBart,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
        compile: bool = False,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile = compile
        self.flops_per_batch: Optional[int] = None
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        self._param_counts = (count(net.encoder), count(net.decoder))

    @property
    def config(self) -> DalleBartConfig:
        return self.net.config

    def setup(self, stage: str) -> None:
        if self.compile and stage == "fit":
            self.net.compile()  # in place: state-dict keys stay those of the plain module

    def _loss(self, batch: dict) -> torch.Tensor:
        return self.net.loss(batch["input_ids"], batch["attention_mask"], batch["labels"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.flops_per_batch = self._train_flops(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size(batch))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size(batch))
        return loss

    def _train_flops(self, batch: dict) -> int:
        """Forward + backward ≈ 6 × parameters touched × tokens, per half of the network (for MFU)."""
        enc, dec = self._param_counts
        return 6 * (enc * batch["input_ids"].numel() + dec * batch["labels"].numel())

    def configure_optimizers(self):
        return lightning_optimizers(self, param_groups(self.net), self.optimizer_factory,
                                    self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # lets DalleBart.from_pretrained rebuild the network from a Lightning checkpoint alone
        # (hub/lightning.py)
        checkpoint[CONFIG_KEY] = self.config.to_dict()
