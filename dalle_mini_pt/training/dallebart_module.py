"""The DalleBart LightningModule: caption tokens + image codes -> loss, with the optimizer and schedule from
Hydra."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch

from ..config import DalleBartConfig
from ..hub.lightning import CONFIG_KEY, LORA_KEY
from ..model import DalleBart
from .divergence import refuse_non_finite
from .lora import LoraSettings, add_adapters
from .optimization import lightning_optimizers, param_groups


def batch_size(batch: dict) -> int:
    return batch["labels"].shape[0]


def batch_image_tokens(batch: dict) -> int:
    """Decoder tokens in a batch: what 'tokens/s' counts (ThroughputMonitor's items)."""
    return batch["labels"].numel()


# what `model.freeze` may name
FREEZABLE = {"text_encoder": lambda net: [net.encoder],
             "embeddings": lambda net: [net.encoder.embed, net.decoder.embed]}


class DalleBartModule(pl.LightningModule):
    """`init_from` is the checkpoint the weights started from (`build_dallebart` loaded it; it is kept for
    the logs). `freeze` names parts that do not train (`text_encoder`, `embeddings`); `lora` (a
    `LoraSettings` mapping) trains only adapters on the projections, which `export` merges."""

    def __init__(
        self,
        net: DalleBart,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
        compile: bool = False,
        init_from: Optional[str] = None,
        freeze: Sequence[str] = (),
        lora: Optional[Mapping] = None,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile, self.init_from = compile, init_from
        if init_from:  # training from them would give NaN at the first step
            refuse_non_finite(net.state_dict(), f"model.init_from={init_from}",
                              "Start from a checkpoint saved before its run diverged.")
        self.flops_per_batch: Optional[int] = None
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        self._param_counts = (count(net.encoder), count(net.decoder))
        self.lora = LoraSettings(**lora) if lora else None
        if self.lora:
            add_adapters(net, self.lora)
        for part in freeze:
            if part not in FREEZABLE:
                raise ValueError(f"model.freeze names {part!r}; it takes {sorted(FREEZABLE)}")
            for module in FREEZABLE[part](net):
                module.requires_grad_(False)
        self._test_sums = torch.zeros(2, dtype=torch.float64)  # summed loss × tokens, tokens

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

    def on_test_epoch_start(self) -> None:
        self._test_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """The validation loss on a set of shards (`python -m dalle_mini_pt.eval`), and its perplexity."""
        loss = self._loss(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch_size(batch))
        tokens = batch_image_tokens(batch)
        self._test_sums += torch.stack([loss.detach().double() * tokens, loss.new_tensor(tokens).double()])
        return loss

    def on_test_epoch_end(self) -> None:
        # per-code perplexity: exp of the mean loss over every code of the set, not a mean of batch exps
        sums = self.trainer.strategy.reduce(self._test_sums, reduce_op="sum")
        self.log("test/perplexity", torch.exp(sums[0] / sums[1]).float(), sync_dist=False)

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
        if self.lora:  # what export needs to rebuild the adapters before merging them
            checkpoint[LORA_KEY] = self.lora.to_dict()
