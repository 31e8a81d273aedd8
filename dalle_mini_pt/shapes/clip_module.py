"""The LightningModule that trains a small CLIP scorer contrastively on captioned images (the reranker of
the embedded default; real use loads OpenAI's CLIP instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pytorch_lightning as pl
import torch
from open_clip.loss import ClipLoss

from ..clip_scorer import ClipScorer
from ..hub.saving import check_target
from ..training.optimization import lightning_optimizers


class ClipModule(pl.LightningModule):
    def __init__(self, scorer: ClipScorer, optimizer: Callable, scheduler: Optional[Callable] = None,
                 save_dir: Optional[str] = None, overwrite: bool = False):
        super().__init__()
        if save_dir:  # refused now, not after the training it would have saved
            check_target(save_dir, overwrite, "model.overwrite=true")
        # a scorer is built for inference (eval mode); Lightning keeps module modes
        self.scorer = scorer.train()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.save_dir, self.overwrite = save_dir, overwrite
        self.contrastive = ClipLoss()

    def _features(self, batch: dict):
        with torch.no_grad():  # the pixels need no gradient, only the towers do
            pixels = self.scorer.prepare(batch["images"])
        tokens = self.scorer.tokenizer(batch["captions"]).to(self.device)
        model = self.scorer.model
        return (model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True),
                model.logit_scale.exp())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.contrastive(*self._features(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["captions"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, text, scale = self._features(batch)
        n = len(batch["captions"])
        self.log("val/loss", self.contrastive(image, text, scale), prog_bar=True, batch_size=n)
        # captions repeat across scenes, so count a hit when the best caption is the image's own text
        best = (image @ text.T).argmax(1)
        hits = [batch["captions"][j] == batch["captions"][i] for i, j in enumerate(best.tolist())]
        self.log("val/retrieval_top1", sum(hits) / n, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        return lightning_optimizers(self, [p for p in self.scorer.parameters() if p.requires_grad],
                                    self.optimizer_factory, self.scheduler_factory)

    def on_train_end(self) -> None:
        if self.save_dir and self.trainer.is_global_zero:
            self.scorer.save_pretrained(Path(self.save_dir), overwrite=self.overwrite)
