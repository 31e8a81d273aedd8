"""The LightningModule: caption tokens + image codes -> loss, with the optimizer and schedule from Hydra."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch
from torch import nn

from .config import DalleBartConfig
from .model import DalleBart
from .schedules import lightning_optimizers


def batch_size(batch: dict) -> int:
    return batch["labels"].shape[0]


def batch_image_tokens(batch: dict) -> int:
    """Decoder tokens in a batch: what 'tokens/s' counts (ThroughputMonitor's items)."""
    return batch["labels"].numel()


def param_groups(model: nn.Module) -> list[dict]:
    """Decay matrices only: biases, LayerNorms and head scales are excluded, as in the reference's AdamW.
    The first group takes the optimizer's own weight_decay (from `conf/optimizer`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "head_scale" not in name else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class DalleMiniModule(pl.LightningModule):
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
        return lightning_optimizers(self, param_groups(self.net), self.optimizer_factory, self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # lets export tools rebuild the network from a Lightning checkpoint alone
        checkpoint["dallebart_config"] = self.config.to_dict()
