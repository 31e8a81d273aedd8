import json

import torch
from helpers import check_rates, check_reconstruction, tiny_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dalle_mini_pt.data.tiny_dataset import train_tokenizer
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.shapes.evaluate import main
from dalle_mini_pt.shapes.scenes import make_split
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import CONFIG_DIR
from dalle_mini_pt.vqgan import VQGAN


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
    # reconstructions are clamped to [0, 1], so any PSNR is above 0: what can be wrong is whose figures
    # they are, so they are recomputed from the saved VQGAN
    check_reconstruction(report, VQGAN.from_pretrained(tmp_path / "vqgan"))
    for split in ("validation", "heldout"):
        for selection in ("first_sample", "clip_best_of_n"):
            check_rates(report["splits"][split][selection], prompts=3)
        assert (tmp_path / "eval" / f"{split}_grid.png").exists()
    assert "| heldout | clip_best_of_n |" in (tmp_path / "eval" / "report.md").read_text()
