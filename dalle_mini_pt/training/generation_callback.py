"""Log generated samples during training: fixed prompts → images → CLIP ranking → one captioned grid.

Runs on rank zero, every `every_n_steps` optimizer steps and/or at the end of validation. It leaves
training exactly as it found it: the sampler draws from its own seeded generator, the global RNG state is
forked anyway (VQGAN/CLIP code we do not own might draw), the module's train/eval mode is restored, and
nothing goes through `self.log`, so no step or metric changes. Before it samples, the run's
`DivergenceGuard` looks at the losses and the weights on every rank: a diverged run stops with the guard's
message instead of sampling from NaN logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from ..generation_config import GenerationConfig
from ..image_grid import caption_grid
from ..pipeline import DalleMiniPipeline
from ..tokenizer import TextTokenizer
from .divergence import guard_of


def _tensorboard(logger, grid, captions: str, step: int) -> None:
    logger.experiment.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    logger.experiment.add_text("samples/clip_scores", captions, step)


def _wandb(logger, grid, captions: str, step: int) -> None:
    logger.log_image(key="samples", images=[grid], caption=[captions], step=step)


def _png(logger, grid, captions: str, step: int) -> None:
    out = Path(logger.log_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / f"step_{step:07d}.png")
    (out / f"step_{step:07d}.txt").write_text(captions + "\n")


# how each logger takes an image; a logger of none of these types (a subclass counts) gets nothing
IMAGE_WRITERS = {TensorBoardLogger: _tensorboard, WandbLogger: _wandb, CSVLogger: _png}


def image_writer(logger):
    return next((write for kind, write in IMAGE_WRITERS.items() if isinstance(logger, kind)), None)


class GenerationCallback(pl.Callback):
    """`sampling` holds `GenerationConfig` options by name (the config lists only those it changes)."""

    def __init__(self, prompts: Sequence[str], vqgan, clip=None, tokenizer: Optional[str] = None,
                 every_n_steps: Optional[int] = None, on_validation_end: bool = True,
                 clip_top_n: Optional[int] = None, scale: int = 1, **sampling):
        if not prompts:
            raise ValueError("callbacks.generation.prompts is empty: list the prompts to sample")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.generation.every_n_steps={every_n_steps} must be >= 1 (or null)")
        self.prompts, self.vqgan, self.clip, self.tokenizer_path = list(prompts), vqgan, clip, tokenizer
        self.every_n_steps, self.at_validation_end = every_n_steps, on_validation_end
        try:
            self.sampling = GenerationConfig(**sampling)
        except (TypeError, ValueError) as err:
            raise ValueError(f"callbacks.generation: {err}") from err
        self.clip_top_n, self.scale = clip_top_n, scale
        self._last_step = -1

    def _tokenizer(self, trainer, pl_module) -> TextTokenizer:
        if self.tokenizer_path:
            return TextTokenizer.from_pretrained(self.tokenizer_path, pl_module.config.max_text_length)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "tokenizer"):
            raise ValueError("GenerationCallback needs a tokenizer: set callbacks.generation.tokenizer")
        return datamodule.tokenizer

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.sample(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.at_validation_end and not trainer.sanity_checking and trainer.global_step != self._last_step:
            self.sample(trainer, pl_module)

    def sample(self, trainer, pl_module) -> None:
        """On every rank: the guard's look (a collective), then rank zero samples."""
        guard = guard_of(trainer)
        if guard is not None:
            guard.look(trainer, pl_module, weights=True)
        self.generate_and_log(trainer, pl_module)

    @rank_zero_only
    def generate_and_log(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        was_training = pl_module.training
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        pl_module.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                self.vqgan.to(pl_module.device)
                if self.clip is not None:
                    self.clip.to(pl_module.device)
                pipe = DalleMiniPipeline(pl_module.net, self._tokenizer(trainer, pl_module), self.vqgan,
                                         self.clip)
                results = pipe(self.prompts, self.sampling, clip_top_n=self.clip_top_n, progress=False)
        finally:
            pl_module.train(was_training)
        labels = [[f"{s:.2f}" for s in r.scores] for r in results] if self.clip is not None else None
        grid = caption_grid([r.images for r in results], self.prompts, labels, scale=self.scale)
        captions = "\n".join(f"{r.prompt}: " + (", ".join(f"{s:.2f}" for s in r.scores) if r.scores else "")
                             for r in results)
        for logger in trainer.loggers:
            write = image_writer(logger)
            if write is not None:
                write(logger, grid, captions, trainer.global_step)
