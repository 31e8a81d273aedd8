"""Training entry point.

    python -m dalle_mini_pt.train +experiment=debug          # seconds on a CPU (tiny model, tiny data)
    python -m dalle_mini_pt.train +experiment=tpu            # the 2021 recipe on a TPU v3-8
    python -m dalle_mini_pt.train ckpt_path=.../last.ckpt    # resume (step, optimizer and schedule)
    python -m dalle_mini_pt.train hydra.run.dir=RUN_DIR ckpt_path=last   # restart a preempted run in RUN_DIR

Importing any module of the package runs `dalle_mini_pt/__init__.py` first, which patches torchvision before
Lightning imports it.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.training.preflight import (
    check_learning_rate,
    check_resume,
    check_trainer_values,
    resolve_last,
)


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
    check_trainer_values(cfg.trainer)
    check_learning_rate(cfg.optimizer)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=instantiate(cfg.scheduler))
    check_compatible(datamodule, model)
    # a callback's own models (VQGAN, CLIP) must not shift training's RNG stream
    with torch.random.fork_rng():
        callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def resume_path(cfg: DictConfig, trainer, model):
    """`ckpt_path` resolved (`last`: the newest of this run directory) and checked before any work."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = resolve_last(trainer)
        if ckpt_path is None:
            print("ckpt_path=last: no checkpoint in this run directory yet, so training starts afresh")
    if ckpt_path is None:
        return None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    check_resume(Path(ckpt_path), trainer, model)
    return str(ckpt_path)


def train(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    ckpt_path = resume_path(cfg, trainer, model)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        saved = [c.saved for c in trainer.callbacks if getattr(c, "saved", None)]
        where = f"saved {saved[0]}" if saved else "no checkpoint saved (add callbacks.preemption)"
        print(f"stopped by SIGTERM after step {trainer.global_step}; {where}. Restart with the same command "
              f"plus hydra.run.dir={cfg.paths.output_dir} ckpt_path=last", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["global_step"] = trainer.global_step
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    metrics = train(cfg)
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    main()
