import numpy as np
import torch
from helpers import compose_train

from dalle_mini_pt.shapes.scenes import make_split
from dalle_mini_pt.train import train
from dalle_mini_pt.vqgan import VQGAN


def test_vqgan_stage_learns_and_saves_a_loadable_vqgan(tmp_path):
    cfg = compose_train(["+experiment=shapes_vqgan", "data.n_train=128", "data.n_val=32", "data.batch_size=8",
                         "trainer.max_steps=16", "trainer.val_check_interval=16",
                         "trainer.log_every_n_steps=1", "model.restart_every=8",
                         "model.vqgan.config.n_embed=32"], output_dir=tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 16
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss")]) for r in rows[1:]
              if r.split(",")[header.index("train/loss")]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # the loss falls
    assert "val/psnr" in metrics and metrics["val/psnr"] > 5 and 0 < metrics["val/codebook_usage"] <= 1

    vqgan = VQGAN.from_pretrained(tmp_path / "vqgan")
    assert vqgan.config.grid_size == 8 and vqgan.config.n_embed == 32  # conf/model/vqgan_shapes.yaml: f=8
    _, images = make_split("validation", 2, 64, seed=5)
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    codes = vqgan.encode(x)
    assert codes.shape == (2, 64) and vqgan.decode(codes).shape == (2, 3, 64, 64)
