"""Evaluation entry point: the loss and per-code perplexity of a checkpoint or a hub model on a set of shards.

    python -m dalle_mini_pt.eval ckpt_path=logs/.../checkpoints/last.ckpt data.val_files='data/val/*.parquet'
    python -m dalle_mini_pt.eval model=dalle_mini model.init_from=dalle-mini/dalle-mini \\
        data.val_files='data/encoded/val/*.parquet'

The model group builds the network (give the one it was trained as, with its `model.lora` if any); a
`ckpt_path` must hold that architecture (checked first) and its weights are loaded; without one the group's
weights are evaluated (`model.init_from`'s). The shards are read as validation reads them, so on the same
files the reported `test/loss` is the trainer's `val/loss`. Weights holding inf/NaN are refused before the
first batch (naming the tensors), and a metric that comes out inf/NaN fails the command.
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.train import check_compatible, instantiate_group
from dalle_mini_pt.training.divergence import refuse_non_finite
from dalle_mini_pt.training.preflight import check_architecture, check_finite_options, read_checkpoint
from dalle_mini_pt.training.xla_precision import instantiate_trainer


def evaluate(cfg: DictConfig) -> dict:
    check_finite_options(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=None)
    check_compatible(datamodule, model)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        ckpt = read_checkpoint(Path(ckpt_path))
        check_architecture(ckpt, Path(ckpt_path), model)
        refuse_non_finite(ckpt.get("state_dict", {}), f"ckpt_path={ckpt_path}",
                          "Evaluate a checkpoint saved before its run diverged.")
    trainer = instantiate_trainer(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path or None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        named = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise ValueError(f"{named} on finite weights: the forward pass overflowed (trainer.precision="
                         f"{cfg.trainer.get('precision')}: evaluate in 32-true) or the shards hold a row it "
                         "cannot score")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> dict:
    metrics = evaluate(cfg)
    print("test metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    return metrics


if __name__ == "__main__":
    main()
