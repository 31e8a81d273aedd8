import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from dalle_mini_pt.generate import main
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import CONFIG_DIR, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_data, tmp_path_factory):
    """A tiny model saved in the native format with its tokenizer, and a tiny VQGAN file."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = DalleBart(tiny_config(image_length=256, image_vocab_size=32))
    model.save_pretrained(out / "model",
                          tokenizer=TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16))
    instantiate(OmegaConf.load(f"{CONFIG_DIR}/vqgan/tiny.yaml")).save_safetensors(out / "vqgan.safetensors")
    return out


def test_cli_writes_one_grid_per_prompt_and_prints_scores(checkpoint_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dalle_mini_pt.generate", "a red square on the left", "a blue circle",
         "--model", str(checkpoint_dir / "model"), "--vqgan", str(checkpoint_dir / "vqgan.safetensors"),
         "--clip", f"{CONFIG_DIR}/clip/tiny.yaml", "--num-images", "3", "--top-k", "8", "--seed", "0",
         "--condition-scale", "3", "--out", str(tmp_path / "grid.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all("CLIP: " in line for line in lines)
    for i, line in enumerate(lines):
        scores = [float(s) for s in line.split("CLIP: ")[1].split(", ")]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        grid = Image.open(tmp_path / f"grid_{i}.png")
        assert grid.width == 3 * 32


def test_cli_from_a_lightning_checkpoint(data_dir, checkpoint_dir, tmp_path):
    cfg = compose_train(["+experiment=debug", f"paths.data_dir={data_dir}", "trainer.max_steps=2",
                         "logger=csv"],
                        output_dir=tmp_path / "run")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (out,) = main(["a green cross", "--model", str(ckpt), "--tokenizer", str(data_dir / "tiny" / "tokenizer"),
                   "--vqgan", str(checkpoint_dir / "vqgan.safetensors"), "--num-images", "2", "--seed", "1",
                   "--condition-scale", "1", "--out", str(tmp_path / "one.png")])
    assert out == tmp_path / "one.png" and Image.open(out).width == 2 * 32
    with pytest.raises(ValueError, match="holds no tokenizer"):
        main(["x", "--model", str(ckpt), "--vqgan", str(checkpoint_dir / "vqgan.safetensors")])


def test_cli_saves_each_image_with_its_metadata_and_the_partial_grids(checkpoint_dir, tmp_path):
    from dalle_mini_pt.png_metadata import read_png_text

    main(["a red square", "--model", str(checkpoint_dir / "model"), "--vqgan",
          str(checkpoint_dir / "vqgan.safetensors"), "--clip", f"{CONFIG_DIR}/clip/tiny.yaml",
          "--num-images", "2", "--seed", "7", "--top-k", "8", "--condition-scale", "2", "--save-each",
          "--progressive", "--out", str(tmp_path / "g.png")])
    partial = sorted(p.name for p in tmp_path.glob("g-partial-*.png"))
    assert partial == [f"g-partial-{n:03d}.png" for n in range(16, 256, 16)]  # one per code row but the last
    texts = [read_png_text(tmp_path / f"g-{i}.png") for i in (1, 2)]
    assert [t["prompt"] for t in texts] == ["a red square"] * 2 and {t["seed"] for t in texts} == {"7"}
    assert sorted(t["sample"] for t in texts) == ["0", "1"]
    assert float(texts[0]["clip_score"]) >= float(texts[1]["clip_score"])  # best first
    assert '"condition_scale": 2.0' in texts[0]["settings"]
    assert Image.open(tmp_path / "g-1.png").size == (32, 32)
