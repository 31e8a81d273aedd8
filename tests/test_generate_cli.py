import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_train, tiny_config
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


@pytest.mark.slow  # a subprocess
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


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "1e300"], "temperature=1e+300 must be between"),
    (["--condition-scale", "1e38"], "condition_scale=1e+38 must be a finite number between"),
    (["--seed", str(2**64)], "seed=18446744073709551616 must be a whole number in 0..2**64-1"),
    (["--seed", str(-2**63 - 1)], "must be a whole number in 0"),
    (["--step-mode", "cuda_graph", "--device", "cpu"], "needs the model on a CUDA device"),
])
def test_impossible_values_exit_2_before_any_model_loads(flags, message, capsys):
    """Issue case 4: these exited 1 with a traceback after the model loaded. The model named here does
    not exist, so reaching the load would fail otherwise."""
    with pytest.raises(SystemExit) as exit:
        main(["a red square", "--model", "/nonexistent/model", "--vqgan", "/nonexistent/vqgan.safetensors",
              *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow  # two processes
def test_a_prompt_that_is_not_text_exits_2_and_a_failed_load_exits_1(tmp_path):
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates: refused before the load;
    what fails after the command line is accepted is one line and status 1, not a traceback."""
    base = [sys.executable, "-m", "dalle_mini_pt.generate"]
    where = ["--model", "/nonexistent/model", "--vqgan", "/nonexistent/vqgan.safetensors",
             "--out", str(tmp_path / "g.png")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*base, b"a \xff square", *where], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and "not valid Unicode text" in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run([*base, "a red square", *where], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 1 and "generate: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_each_saved_image_names_what_reproduces_it_in_a_multi_prompt_call(checkpoint_dir, tmp_path):
    """Issue case 12: `generate A B --seed 3 --save-each` wrote chunks from which `generate B --seed 3`
    gave other images (one seed draws every row of the call, so B's rows come after A's). The chunks name
    the call's prompts and B's index among them, and those reproduce B's image."""
    import json

    from dalle_mini_pt.generation_config import GenerationConfig
    from dalle_mini_pt.pipeline import DalleMiniPipeline
    from dalle_mini_pt.png_metadata import read_png_text

    parts = ["--model", str(checkpoint_dir / "model"), "--vqgan", str(checkpoint_dir / "vqgan.safetensors"),
             "--clip", f"{CONFIG_DIR}/clip/tiny.yaml"]
    main(["a red square", "a blue circle", *parts, "--num-images", "2", "--seed", "3", "--top-k", "8",
          "--save-each", "--out", str(tmp_path / "g.png")])
    saved = tmp_path / "g_1-1.png"  # the second prompt's best image
    text = read_png_text(saved)
    assert json.loads(text["prompts"]) == ["a red square", "a blue circle"] and text["prompt_index"] == "1"
    settings = json.loads(text["settings"])
    assert settings.pop("keep_rows") == 0
    pipe = DalleMiniPipeline.from_components(str(checkpoint_dir / "model"),
                                             str(checkpoint_dir / "vqgan.safetensors"),
                                             clip=f"{CONFIG_DIR}/clip/tiny.yaml")
    again = pipe(json.loads(text["prompts"]), GenerationConfig.from_dict(settings), seed=int(text["seed"]))
    result = again[int(text["prompt_index"])]
    image = result.images[result.order.index(int(text["sample"]))]
    assert (np.asarray(image) == np.asarray(Image.open(saved).convert("RGB"))).all()
    alone = pipe([text["prompt"]], GenerationConfig.from_dict(settings), seed=int(text["seed"]))[0]
    assert not torch.equal(alone.codes.sort(0).values, result.codes.sort(0).values)  # why the chunks say more


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"),
                                                 (False, False, "cpu")])
def test_the_device_defaults_to_cuda_then_mps_then_cpu(cuda, mps, expected, monkeypatch, tmp_path):
    """Without --device the command lines take the best device there is. This machine has neither CUDA nor
    MPS, so their presence is what is patched; the choice is the code under test."""
    from dalle_mini_pt.app.__main__ import parser as app_parser
    from dalle_mini_pt.generate import parse_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    where = ["--model", "/nonexistent/model", "--vqgan", "/nonexistent/vqgan.safetensors"]
    command = ["a red square", *where, "--out", str(tmp_path / "g.png")]
    assert parse_args(command).device == expected
    assert app_parser().parse_args(where).device == expected
    assert parse_args([*command, "--device", "cpu"]).device == "cpu"
