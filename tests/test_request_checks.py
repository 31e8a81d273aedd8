"""The checks every request passes before any work (request_checks.py, GenerationConfig), the checks of a
saved pipeline's model_index.json, and the component yamls a command line may name: each bad input is
refused by name, before a pixel is resized, a code sampled or a foreign callable run."""

import io
import json
import shutil

import pytest
import torch
from demo_server import save_tiny_pipeline
from PIL import Image

from dalle_mini_pt.component_specs import instantiate_component
from dalle_mini_pt.generation_config import GenerationConfig
from dalle_mini_pt.pipeline import DalleMiniPipeline, load_clip, load_vqgan
from dalle_mini_pt.request_checks import (
    ImageLimits,
    RequestTooLarge,
    check_every,
    check_prompts,
    read_init_image,
)
from dalle_mini_pt.train import CONFIG_DIR


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_strip_is_refused_by_its_sides_before_any_resize():
    """Issue case 1: a 1x100000 PNG (a few hundred bytes, under the pixel bound) was resized to
    64x6400000 and took gigabytes; each side and the aspect are bounded from the header now."""
    strip = png(1, 100_000)
    assert len(strip) < 2000
    with pytest.raises(RequestTooLarge, match="1x100000, a side over 4096"):
        read_init_image(strip, 32)
    with pytest.raises(RequestTooLarge, match="long side is over 8 times"):
        read_init_image(png(40, 4000), 32)
    with pytest.raises(RequestTooLarge, match="pixels"):
        read_init_image(png(4096, 4096), 32, ImageLimits(max_pixels=2**20))
    with pytest.raises(ValueError, match="not an image"):
        read_init_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", 32)
    assert read_init_image(png(60, 40), 32).shape == (32, 32, 3)


def test_prompts_must_be_valid_text_and_bounded():
    assert check_prompts("a red square") == ["a red square"]
    with pytest.raises(ValueError, match="prompt 1 is not valid Unicode text: '\\\\ud800' at character 2"):
        check_prompts(["fine", "a \ud800 b"])
    with pytest.raises(RequestTooLarge, match="prompt 0 is 11 characters, over 10"):
        check_prompts(["x" * 11], max_chars=10)
    with pytest.raises(ValueError, match="every=-5 must be -1"):
        check_every(-5, 16, 256)
    assert check_every(-1, 16, 256) == 16 and check_every(None, 16, 256) == 256


@pytest.mark.parametrize("option, value, match", [
    ("seed", 2**64, "seed=18446744073709551616 must be a whole number in 0..2\\*\\*64-1"),
    ("seed", -2**63 - 1, "seed=.* must be a whole number in 0"),
    ("temperature", 1e300, "temperature=1e\\+300 must be between 0.001 and 1000"),
    ("condition_scale", 1e38, "condition_scale=1e\\+38 must be a finite number between -1000 and 1000"),
])
def test_options_past_what_the_sampler_survives_are_refused(option, value, match):
    """Issue case 4: these answered bare 500s (or sampled NaN) after the model ran."""
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**{option: value})
    assert GenerationConfig(seed=2**64 - 1).seed == 2**64 - 1


def test_cuda_graphs_are_refused_on_a_cpu_model_before_sampling():
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        GenerationConfig(step_mode="cuda_graph").check_device(torch.device("cpu"))
    GenerationConfig(step_mode="static").check_device("cpu")


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    return save_tiny_pipeline(tiny_data / "tokenizer", tmp_path_factory.mktemp("index") / "pipeline")


@pytest.mark.parametrize("change, match", [
    ({"decode_batch_size": 0}, "decode_batch_size=0 must be a whole number >= 1"),
    ({"model": None}, "model=None must be a sub-folder name"),
    ({"model": 5}, "model=5 must be a sub-folder name"),
    ({"model": "../elsewhere"}, "model='../elsewhere' must be a sub-folder of the pipeline's own folder"),
    ({"generation_config": {"top_k": -1}}, "top_k=-1 must be a whole number >= 1"),
    # each component's [library, class] (test_loading.py reads both index formats)
    ({"vqgan": ["dalle_mini_pt", "ClipScorer"]},
     r"vqgan=\['dalle_mini_pt', 'ClipScorer'\]: dalle_mini_pt loads its vqgan as "
     r"\['dalle_mini_pt', 'VQGAN'\]"),
    ({"model": ["diffusers", "DalleBart"]}, "loads its model as"),
    ({"tokenizer": [None, None]}, r"tokenizer=\[None, None\] says the pipeline has no tokenizer, which every "
                                  "pipeline needs"),
    ({"vqgan": {"folder": "vqgan"}}, r"vqgan=\{'folder': 'vqgan'\} must be a sub-folder name \(as earlier "
                                     r"versions saved\) or a \[library, class\] pair"),
    ({"_class_name": "StableDiffusionPipeline"}, "_class_name='StableDiffusionPipeline': this is not a "
                                                 "DalleMiniPipeline"),
])
def test_a_bad_model_index_fails_at_load_naming_the_key(saved, tmp_path, change, match):
    """Issue case 10: these failed after sampling, or as KeyError / TypeError."""
    copy = shutil.copytree(saved, tmp_path / "p")
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, **change}))
    with pytest.raises(ValueError, match=match):
        DalleMiniPipeline.from_pretrained(copy)


def test_a_model_index_without_its_model_says_so(saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "p")
    index = json.loads((copy / "model_index.json").read_text())
    del index["model"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model_index.json: no 'model'"):
        DalleMiniPipeline.from_pretrained(copy)


def test_a_component_yaml_builds_only_the_projects_own_classes(tmp_path):
    """Issue case 11: `_target_: shutil.copyfile` in a --vqgan yaml ran (Hydra refuses only a few
    callables); nothing in the file is built now, at the top or nested."""
    secret, copy = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("key")
    top = tmp_path / "top.yaml"
    top.write_text(f"_target_: shutil.copyfile\nsrc: {secret}\ndst: {copy}\n")
    with pytest.raises(ValueError, match="its _target_ is 'shutil.copyfile'"):
        load_vqgan(str(top))
    nested = tmp_path / "nested.yaml"
    nested.write_text(f"_target_: dalle_mini_pt.vqgan.VQGAN\nconfig:\n  _target_: shutil.copyfile\n"
                      f"  src: {secret}\n  dst: {copy}\n")
    with pytest.raises(ValueError, match="'shutil.copyfile' is not one of the vqgan component's classes"):
        load_vqgan(str(nested))
    with pytest.raises(ValueError, match="clip"):
        load_clip(str(top))
    assert not copy.exists()
    assert load_vqgan(f"{CONFIG_DIR}/vqgan/tiny.yaml").config.resolution == 32
    assert instantiate_component(f"{CONFIG_DIR}/clip/tiny.yaml", "clip") is not None
