"""Evaluation entry point: the loss and per-code perplexity of a checkpoint or a hub model on a set of shards.

    python -m dalle_mini_pt.eval ckpt_path=logs/.../checkpoints/last.ckpt data.val_files='data/val/*.parquet'
    python -m dalle_mini_pt.eval model=dalle_mini model.init_from=dalle-mini/dalle-mini \\
        data.val_files='data/encoded/val/*.parquet'

The model group builds the network (give the one it was trained as, with its `model.lora` if any); a
`ckpt_path` must hold that architecture (checked first) and its weights are loaded; without one the group's
weights are evaluated (`model.init_from`'s). The shards are read as validation reads them, so on the same
files the reported `test/loss` is the trainer's `val/loss`.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.train import check_compatible, instantiate_group
from dalle_mini_pt.training.preflight import check_architecture, read_checkpoint


def evaluate(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=None)
    check_compatible(datamodule, model)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        check_architecture(read_checkpoint(Path(ckpt_path)), Path(ckpt_path), model)
    trainer = instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path or None)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> dict:
    metrics = evaluate(cfg)
    print("test metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    return metrics


if __name__ == "__main__":
    main()
