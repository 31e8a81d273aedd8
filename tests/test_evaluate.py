import json

import torch
from helpers import tiny_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dalle_mini_pt.data.tiny_dataset import train_tokenizer
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.shapes.evaluate import main
from dalle_mini_pt.shapes.scenes import make_split
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import CONFIG_DIR


def test_evaluate_writes_the_report_and_grids(tmp_path):
    """Mechanics with untrained tiny components: the numbers are low, but every figure is produced."""
    torch.manual_seed(0)
    captions, _ = make_split("train", 200)
    tokenizer = TextTokenizer(train_tokenizer(captions), 16)
    DalleBart(tiny_config(image_length=256, image_vocab_size=32)).save_pretrained(tmp_path / "model",
                                                                                  tokenizer=tokenizer)
    instantiate(OmegaConf.load(f"{CONFIG_DIR}/vqgan/tiny.yaml")).save_pretrained(tmp_path / "vqgan")
    instantiate(OmegaConf.load(f"{CONFIG_DIR}/clip/tiny.yaml")).save_pretrained(tmp_path / "clip")
    report = main(["--model", str(tmp_path / "model"), "--vqgan", str(tmp_path / "vqgan"), "--clip",
                   str(tmp_path / "clip"), "--out", str(tmp_path / "eval"), "--prompts", "3",
                   "--num-images", "2", "--top-k", "8"])
    assert report == json.loads((tmp_path / "eval" / "report.json").read_text())
    assert 0 < report["vqgan_psnr_db"] < 60
    recon = report["vqgan_reconstruction"]
    assert recon["validation"]["psnr_db"] == report["vqgan_psnr_db"] and 0 < recon["heldout"]["psnr_db"] < 60
    assert all(0.0 <= recon[s]["colour_and_shape"] <= 1.0 for s in recon)
    for split in ("validation", "heldout"):
        for selection in ("first_sample", "clip_best_of_n"):
            rates = report["splits"][split][selection]
            assert set(rates) == {"colour", "shape", "size", "position", "colour_and_shape", "all"}
            assert all(0.0 <= v <= 1.0 for v in rates.values())
        assert (tmp_path / "eval" / f"{split}_grid.png").exists()
    assert "| heldout | clip_best_of_n |" in (tmp_path / "eval" / "report.md").read_text()
