import csv

import pytest
from helpers import compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dalle_mini_pt.train import train


def losses(run_dir):
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(metrics.open())
            if r.get("train/loss")]


def run(data_dir, out, callbacks):
    overrides = ["+experiment=debug", f"paths.data_dir={data_dir}", f"callbacks={callbacks}", "logger=many",
                 "trainer.max_steps=12", "trainer.log_every_n_steps=1", "trainer.val_check_interval=6"]
    if "generation" in callbacks:
        overrides += ["callbacks.generation.every_n_steps=4", "callbacks.generation.num_images=2"]
    return train(compose_train(overrides, output_dir=out))


@pytest.mark.slow
def test_callback_logs_grids_and_leaves_training_unchanged(data_dir, tmp_path):
    run(data_dir, tmp_path / "with", "[lr_monitor,generation]")
    run(data_dir, tmp_path / "without", "[lr_monitor]")
    assert losses(tmp_path / "with") == losses(tmp_path / "without")  # identical, step for step
    assert len(losses(tmp_path / "with")) == 12

    pngs = sorted(p.name for p in (tmp_path / "with").glob("csv/version_*/samples/*.png"))
    # every 4 steps (4, 8, 12) and at each validation end (6, 12; 12 is logged once)
    assert pngs == ["step_0000004.png", "step_0000006.png", "step_0000008.png", "step_0000012.png"]
    events = EventAccumulator(str(next((tmp_path / "with").glob("tensorboard/version_*")))).Reload()
    images = events.Images("samples")
    assert [i.step for i in images] == [4, 6, 8, 12] and images[0].width > 0
