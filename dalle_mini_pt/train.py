"""Training entry point.

    python -m dalle_mini_pt.train +experiment=debug          # seconds on a CPU (tiny model, tiny data)
    python -m dalle_mini_pt.train +experiment=tpu            # the 2021 recipe on a TPU v3-8
    python -m dalle_mini_pt.train ckpt_path=.../last.ckpt    # resume (step, optimizer and schedule)
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import dalle_mini_pt  # noqa: F401  (patches torchvision before Lightning is imported)
from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.config_dir import CONFIG_DIR


def check_compatible(datamodule, model) -> None:
    """Cross-group checks that no single object can make on its own (text models only)."""
    if not (hasattr(datamodule, "tokenizer") and isinstance(getattr(model, "config", None), DalleBartConfig)):
        return
    cfg = model.config
    if datamodule.tokenizer.max_length > cfg.text_positions:
        raise ValueError(f"data.text_length={datamodule.tokenizer.max_length} exceeds the model's "
                         f"{cfg.text_positions} text positions; lower data.text_length or use a model with "
                         "more positions (model.net.config.text_positions)")
    if datamodule.tokenizer.vocab_size > cfg.encoder_vocab_size:
        raise ValueError(f"the tokenizer has {datamodule.tokenizer.vocab_size} tokens but the model embeds "
                         f"only {cfg.encoder_vocab_size}; raise model.net.config.encoder_vocab_size or use "
                         "the model's own tokenizer (data.tokenizer)")


def instantiate_group(group) -> list:
    """Objects of a callbacks/logger group; entries without `_target_` are leftovers of overrides (an
    experiment tuning a callback that `callbacks=none` removed) and are skipped."""
    return [instantiate(c) for c in (group or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def build(cfg: DictConfig):
    """Instantiate data, model, callbacks, loggers and trainer from a composed config."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=instantiate(cfg.scheduler))
    check_compatible(datamodule, model)
    # a callback's own models (VQGAN, CLIP) must not shift training's RNG stream
    with torch.random.fork_rng():
        callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["global_step"] = trainer.global_step
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    metrics = train(cfg)
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    main()
