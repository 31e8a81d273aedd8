"""Training entry point.

    python -m dalle_mini_pt.train +experiment=debug          # seconds on a CPU (tiny model, tiny data)
    python -m dalle_mini_pt.train +experiment=tpu            # the 2021 recipe on a TPU v3-8
    python -m dalle_mini_pt.train ckpt_path=.../last.ckpt    # resume (step, optimizer and schedule)
    python -m dalle_mini_pt.train hydra.run.dir=RUN_DIR ckpt_path=last   # restart a preempted run in RUN_DIR

Importing any module of the package runs `dalle_mini_pt/__init__.py` first, which patches torchvision before
Lightning imports it.
"""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path
from typing import Optional

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.training.divergence import DivergenceGuard, TrainingDiverged
from dalle_mini_pt.training.preflight import (
    check_finite_options,
    check_learning_rate,
    check_resume,
    check_trainer_values,
    resolve_last,
)
from dalle_mini_pt.training.run_logs import log_run, rich_callbacks
from dalle_mini_pt.training.xla_precision import instantiate_trainer


def check_compatible(datamodule, model) -> None:
    """Cross-group checks that no single object can make on its own (text models only)."""
    if not (hasattr(datamodule, "tokenizer") and isinstance(getattr(model, "config", None), DalleBartConfig)):
        return
    cfg = model.config
    if datamodule.tokenizer.max_length > cfg.text_positions:
        raise ValueError(f"data.text_length={datamodule.tokenizer.max_length} exceeds the model's "
                         f"{cfg.text_positions} text positions; lower data.text_length or use a model with "
                         "more positions (model.net.config.text_positions)")
    datamodule.tokenizer.fit_to(cfg.encoder_vocab_size, "model.net.config.encoder_vocab_size")


def instantiate_group(group) -> list:
    """Objects of a callbacks/logger group; entries without `_target_` are leftovers of overrides (an
    experiment tuning a callback that `callbacks=none` removed) and are skipped."""
    return [instantiate(c) for c in (group or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def guarded(callbacks: list) -> list:
    """The callbacks with a `DivergenceGuard` first (the configured one, else a default one: a run without
    `callbacks.divergence`, e.g. `callbacks=none`, is guarded too), so it looks before any other callback
    acts on a step."""
    guards = [c for c in callbacks if isinstance(c, DivergenceGuard)] or [DivergenceGuard()]
    return guards + [c for c in callbacks if not isinstance(c, DivergenceGuard)]


def build(cfg: DictConfig):
    """Instantiate data, model, callbacks, loggers and trainer from a composed config."""
    check_finite_options(cfg)
    check_trainer_values(cfg.trainer)
    check_learning_rate(cfg.optimizer)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=instantiate(cfg.scheduler))
    check_compatible(datamodule, model)
    # a callback's own models (VQGAN, CLIP) must not shift training's RNG stream
    with torch.random.fork_rng():
        callbacks = guarded(instantiate_group(cfg.get("callbacks")))
    callbacks += rich_callbacks(callbacks, cfg.trainer)
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)
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
    check_resume(Path(ckpt_path), trainer, model)
    return str(ckpt_path)


def train(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    ckpt_path = resume_path(cfg, trainer, model)
    log_run(trainer, cfg, model)
    if cfg.get("validate_first") and ckpt_path is None:  # the starting loss, logged at step 0
        trainer.validate(model, datamodule=datamodule)
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


def optimized_value(metrics: dict, name: Optional[str]) -> Optional[float]:
    """The metric a sweep optimises (`optimized_metric`, e.g. val/loss), which `main` returns; one that is
    not a number fails the run (a sweep records the trial as failed, not as a value to rank)."""
    if not name:
        return None
    if name not in metrics:
        raise ValueError(f"optimized_metric={name} was not logged by this run; it logged {sorted(metrics)}")
    if not math.isfinite(metrics[name]):
        raise ValueError(f"optimized_metric={name} is {metrics[name]}: the weights stayed finite but the "
                         "metric did not (a validation batch that overflows or holds inf/NaN)")
    return metrics[name]


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    try:
        metrics = train(cfg)
    except TrainingDiverged as err:
        if in_sweep():  # the sweeper records the trial as failed and goes on to the next
            raise
        print(f"{err}\n(run directory: {cfg.paths.output_dir})", file=sys.stderr)
        raise SystemExit(1) from None
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
