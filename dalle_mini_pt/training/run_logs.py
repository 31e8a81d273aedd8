"""What a run tells its loggers and its terminal: the composed config, its tags and the parameter counts go
to every logger (`log_hyperparams`: hparams.yaml for CSV, the HPARAMS tab of TensorBoard, W&B's config), and
where `rich` is installed the progress bar and model summary are Rich's."""

from __future__ import annotations

import importlib.util

from omegaconf import DictConfig, OmegaConf
from torch import nn


def parameter_counts(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"params/total": total, "params/trainable": trainable, "params/non_trainable": total - trainable}


def hyperparameters(cfg: DictConfig, module: nn.Module) -> dict:
    return {**OmegaConf.to_container(cfg, resolve=True), "tags": list(cfg.get("tags") or []),
            **parameter_counts(module)}


def log_run(trainer, cfg: DictConfig, module: nn.Module) -> None:
    params = hyperparameters(cfg, module)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def rich_callbacks(callbacks: list, trainer_cfg: DictConfig) -> list:
    """RichProgressBar and RichModelSummary where `rich` is installed, unless the run turns bar or summary
    off or brings its own."""
    if importlib.util.find_spec("rich") is None:
        return []
    from pytorch_lightning.callbacks import ModelSummary, ProgressBar, RichModelSummary, RichProgressBar

    def wanted(flag: str, kind: type) -> bool:
        return trainer_cfg.get(flag, True) and not any(isinstance(c, kind) for c in callbacks)

    extra = [RichProgressBar()] if wanted("enable_progress_bar", ProgressBar) else []
    return extra + ([RichModelSummary(max_depth=2)] if wanted("enable_model_summary", ModelSummary) else [])
