import numpy as np
import torch
from helpers import compose_train

from dalle_mini_pt.clip_scorer import ClipScorer
from dalle_mini_pt.shapes.scenes import make_split
from dalle_mini_pt.train import train


def test_clip_stage_learns_and_saves_a_loadable_scorer(tmp_path):
    cfg = compose_train(["+experiment=shapes_clip", "data.n_train=256", "data.n_val=64", "data.batch_size=32",
                         "trainer.max_steps=24", "trainer.val_check_interval=24", "logger=csv",
                         "model.scorer.model_cfg.vision_cfg.layers=1",
                         "model.scorer.model_cfg.text_cfg.layers=1"],
                        output_dir=tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 24 and metrics["train/loss"] < 3.4  # ln(32) ≈ 3.47 at chance
    scorer = ClipScorer.from_pretrained(tmp_path / "clip")
    captions, images = make_split("validation", 4, seed=5)
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]) / 255
    assert scorer.similarity_matrix(pixels, captions).shape == (4, 4)
