import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_train
from transformers import BartConfig, BartModel

from dalle_mini_pt.train import train

ROOT = Path(__file__).resolve().parent.parent


def run_entry_point(*overrides: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dalle_mini_pt.train", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def logged_steps(run_dir: Path) -> list[int]:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    return [int(row["step"]) for row in csv.DictReader(metrics.open()) if row.get("train/loss")]


@pytest.mark.slow
def test_debug_experiment_trains_checkpoints_and_resumes(data_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    out = run_entry_point("+experiment=debug", f"paths.data_dir={data_dir}", f"hydra.run.dir={first}",
                          "trainer.max_steps=10", "trainer.log_every_n_steps=2",
                          "callbacks.model_checkpoint.every_n_train_steps=5")
    assert "global_step=10" in out
    last = first / "checkpoints" / "last.ckpt"
    assert last.exists() and (first / "checkpoints" / "step_0000005.ckpt").exists()
    steps = logged_steps(first)
    assert steps and max(steps) <= 10

    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 10 and state["dallebart_config"]["d_model"] == 64
    assert state["lr_schedulers"][0]["last_epoch"] == 10  # the schedule is saved with the step

    out = run_entry_point("+experiment=debug", f"paths.data_dir={data_dir}", f"hydra.run.dir={second}",
                          "trainer.max_steps=16", "trainer.log_every_n_steps=2", f"ckpt_path={last}")
    assert "global_step=16" in out
    resumed = logged_steps(second)
    assert min(resumed) >= 10 and max(resumed) <= 16, resumed
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 16


def test_2021_model_trains_from_a_pretrained_bart(data_dir, tmp_path):
    """tiny_2021 + a BART saved locally, loaded through the path a hub name takes."""
    BartModel(BartConfig(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=1,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                         decoder_ffn_dim=128, max_position_embeddings=32)).save_pretrained(tmp_path / "bart")
    cfg = compose_train(["+experiment=debug", "model=tiny_2021", f"paths.data_dir={data_dir}",
                         f"model.net.pretrained_bart={tmp_path / 'bart'}", "trainer.max_steps=30",
                         "trainer.log_every_n_steps=1", "logger=csv", "callbacks=none",
                         "trainer.val_check_interval=30"],
                        output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert metrics["global_step"] == 30
    losses = [float(r["train/loss"]) for r in csv.DictReader(next((tmp_path / "run").glob(
        "csv/version_*/metrics.csv")).open()) if r.get("train/loss")]
    assert losses[-1] < 0.7 * losses[0], losses
