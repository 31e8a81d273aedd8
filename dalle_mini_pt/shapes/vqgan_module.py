"""The LightningModule that fits a VQGAN (the first stage of the embedded default): pixel reconstruction plus
taming's codebook/commitment loss, with dead codebook entries restarted from encoder outputs.

No discriminator and no perceptual loss: on the flat-coloured shape scenes a pixel loss alone reaches the PSNR
target in the CPU budget, and LPIPS would need downloaded weights."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..hub.saving import check_target
from ..training.optimization import lightning_optimizers
from ..vqgan import VQGAN

RECON_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of [0, 1] pixels, (B,): what the VQGAN stage logs and the evaluation reports."""
    mse = ((reconstructions - images) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


class VQGANModule(pl.LightningModule):
    """Trains every submodule of `vqgan`. `restart_every` steps, codebook entries no training batch picked
    since the last check are moved onto random encoder outputs of the current batch; the first check
    (step 0) thereby initialises the codebook from data, since taming's uniform(±1/n) init sits far from
    the encoder's outputs."""

    def __init__(self, vqgan: VQGAN, optimizer: Callable, scheduler: Optional[Callable] = None,
                 codebook_weight: float = 1.0, recon_loss: str = "l2", restart_every: int = 50,
                 save_dir: Optional[str] = None, overwrite: bool = False):
        super().__init__()
        if save_dir:  # refused now, not after the training it would have saved
            check_target(save_dir, overwrite, "model.overwrite=true")
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"model.recon_loss={recon_loss!r} is unknown; use one of {sorted(RECON_LOSSES)}")
        if restart_every < 0:
            raise ValueError(f"model.restart_every={restart_every} must be >= 0 (0 turns restarts off)")
        self.vqgan = vqgan
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.codebook_weight, self.recon_loss = codebook_weight, RECON_LOSSES[recon_loss]
        self.restart_every, self.save_dir, self.overwrite = restart_every, save_dir, overwrite
        n_embed = vqgan.config.n_embed
        # not persistent: the counts only span one restart interval, and the VQGAN's own state dict stays
        # taming's
        self.register_buffer("train_hits", torch.zeros(n_embed, dtype=torch.long), persistent=False)
        self.register_buffer("val_hits", torch.zeros(n_embed, dtype=torch.long), persistent=False)

    def reconstruct(self, x: torch.Tensor):
        """Differentiable encode → quantize → decode (the wrapper's encode/decode build no graph).
        x in the model's pixel range -> (reconstruction, codebook loss, pre-quantisation latents, codes)."""
        vq = self.vqgan
        z = vq.quant_conv(vq.encoder(x))
        z_q, codebook_loss, (_, _, codes) = vq.quantize(z)
        return vq.decoder(vq.post_quant_conv(z_q)), codebook_loss, z, codes.reshape(-1)

    def _losses(self, images: torch.Tensor):
        x = self.vqgan.to_model_range(images)
        rec, codebook_loss, z, codes = self.reconstruct(x)
        recon = self.recon_loss(rec, x)
        return recon + self.codebook_weight * codebook_loss, recon, codebook_loss, rec, z, codes

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["images"]
        loss, recon, codebook_loss, _, z, codes = self._losses(images)
        self.train_hits += torch.bincount(codes, minlength=len(self.train_hits))
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train/recon": recon, "train/codebook": codebook_loss}, batch_size=n)
        self._restart_dead_codes(z.detach())
        return loss

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        if not self.restart_every or self.global_step % self.restart_every:
            return
        dead = self.train_hits == 0
        self.log("train/dead_codes", dead.float().mean(), batch_size=1)
        if dead.any():
            latents = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = torch.randint(len(latents), (int(dead.sum()),), device=latents.device)
            self.vqgan.quantize.embedding.weight[dead] = latents[pick]
        self.train_hits.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["images"]
        loss, _, _, rec, _, codes = self._losses(images)
        self.val_hits += torch.bincount(codes, minlength=len(self.val_hits))
        n = len(images)
        self.log("val/loss", loss, batch_size=n)
        self.log("val/psnr", psnr(images, self.vqgan.to_unit_range(rec)).mean(), prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        # the fraction of the codebook the validation scenes use: dead codes are the usual VQGAN failure
        self.log("val/codebook_usage", (self.val_hits > 0).float().mean(), prog_bar=True)
        self.val_hits.zero_()

    def configure_optimizers(self):
        return lightning_optimizers(self, [p for p in self.vqgan.parameters() if p.requires_grad],
                                    self.optimizer_factory, self.scheduler_factory)

    def on_train_end(self) -> None:
        if self.save_dir and self.trainer.is_global_zero:
            self.vqgan.save_pretrained(Path(self.save_dir), overwrite=self.overwrite)
