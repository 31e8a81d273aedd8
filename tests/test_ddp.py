"""trainer=ddp with 2 CPU processes (gloo) through the real entry point: the ranks end with identical
weights, and each trained on its own half of the data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dalle_mini_pt.data import tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, BATCH = 128, 16


def numbered_data(root: Path, tiny: Path) -> Path:
    """The tiny set with each row's id written into its first two codes, so a batch says which rows it
    holds."""
    captions, codes = tiny_dataset.make_samples(N_TRAIN, seed=0)
    codes[:, 0], codes[:, 1] = np.divmod(np.arange(N_TRAIN), 32)
    root.mkdir()
    tiny_dataset.write_parquet(root / "train.parquet", captions, codes)
    return root / "train.parquet"


@pytest.mark.slow
def test_two_cpu_ranks_stay_in_sync_on_disjoint_halves(tiny_data, tmp_path):
    train_file, probe = numbered_data(tmp_path / "data", tiny_data), tmp_path / "probe"
    steps = N_TRAIN // (2 * BATCH)  # one epoch: every row once, over both ranks
    overrides = [
        "+experiment=debug", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.precision=32-true", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        "+trainer.limit_val_batches=0", "callbacks=none", "logger=csv",
        f"data.train_files={train_file}", f"data.val_files={tiny_data}/val.parquet",
        f"data.tokenizer={tiny_data}/tokenizer", f"data.batch_size={BATCH}", "data.blank_caption_prob=0",
        f"hydra.run.dir={tmp_path / 'run'}",  # rank 1 is relaunched with this argv: same run dir
        "+callbacks.probe._target_=rank_probe.RankProbe", f"+callbacks.probe.out_dir={probe}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "dalle_mini_pt.train", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"global_step={steps}" in proc.stdout

    r0, r1 = (torch.load(probe / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["global_step"] == r1["global_step"] == steps
    assert len(r0["seen"]) == len(r1["seen"]) == N_TRAIN // 2
    assert not set(r0["seen"]) & set(r1["seen"]), "the ranks trained on overlapping rows"
    assert sorted(r0["seen"] + r1["seen"]) == list(range(N_TRAIN))
    assert r0["state"].keys() == r1["state"].keys()
    for name, w in r0["state"].items():
        assert torch.equal(w, r1["state"][name]), f"{name} differs between ranks"
    print(f"\n2 CPU ranks, {steps} steps: {len(r0['seen'])} + {len(r1['seen'])} disjoint rows, "
          f"{len(r0['state'])} identical tensors")
