"""Every trained component saves, loads and uploads through the one HubMixin, and a whole pipeline saves as
one directory that loads back and samples the same codes for a seed."""

import json

import pytest
import torch
from helpers import tiny_config
from huggingface_hub import constants
from hydra.utils import instantiate
from local_hub import LocalHub
from omegaconf import OmegaConf

from dalle_mini_pt.clip_scorer import ClipScorer
from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.generation_config import GenerationConfig
from dalle_mini_pt.hub.mixin import HubMixin
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.pipeline import DalleMiniPipeline
from dalle_mini_pt.text_normalizer import TextNormalizer
from dalle_mini_pt.tokenizer import TextTokenizer


def component(kind: str):
    torch.manual_seed(0)
    if kind == "dallebart":
        return DalleBart(tiny_config(image_length=256, image_vocab_size=32)).eval()
    return instantiate(OmegaConf.load(f"{CONFIG_DIR}/{kind}/tiny.yaml")).eval()


def outputs(kind: str, module) -> list[torch.Tensor]:
    """Something each component computes from all its weights."""
    g = torch.Generator().manual_seed(1)
    if kind == "dallebart":
        ids = torch.randint(3, 512, (2, 16), generator=g)
        with torch.no_grad():
            return [module(ids, torch.ones_like(ids), torch.randint(0, 32, (2, 256), generator=g))]
    images = torch.rand(3, 3, 32, 32, generator=g)
    if kind == "vqgan":
        codes = module.encode(images)
        return [codes, module.decode(codes)]
    return [module.score(images, ["a red square", "a blue circle", "a green cross"])]


@pytest.mark.parametrize("kind", ["dallebart", "vqgan", "clip"])
def test_each_component_round_trips_through_the_one_mixin(kind, tmp_path, monkeypatch):
    model = component(kind)
    cls = type(model)
    assert isinstance(model, HubMixin)
    for method in ("from_pretrained", "save_pretrained", "push_to_hub"):
        assert getattr(cls, method).__qualname__ == f"HubMixin.{method}"
    model.save_pretrained(tmp_path / "saved")
    assert ({"config.json", "model.safetensors", "README.md"}
            <= {p.name for p in (tmp_path / "saved").iterdir()})
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == [cls.__name__]
    loaded = cls.from_pretrained(tmp_path / "saved")
    assert not loaded.training
    for ours, theirs in zip(outputs(kind, model), outputs(kind, loaded)):
        assert torch.equal(ours, theirs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in hub is on localhost
    with LocalHub(tmp_path / "hub") as hub:
        model.push_to_hub(f"me/tiny-{kind}", endpoint=hub.url, token="hf_test")
        card = (hub.root / "me" / f"tiny-{kind}" / "README.md").read_text()
        assert f'{cls.__name__}.from_pretrained("me/tiny-{kind}")' in card
        pulled = cls.from_pretrained(f"me/tiny-{kind}", endpoint=hub.url, cache_dir=tmp_path / "cache")
    for ours, theirs in zip(outputs(kind, model), outputs(kind, pulled)):
        assert torch.equal(ours, theirs)


def test_a_named_open_clip_architecture_saves_and_loads_offline(tmp_path):
    """Random weights (no download); its open_clip config and preprocessing (OpenAI's mean/std) travel
    along."""
    named = ClipScorer.from_open_clip("ViT-B-32", pretrained=None)
    named.save_pretrained(tmp_path / "clip")
    loaded = ClipScorer.from_pretrained(tmp_path / "clip")
    assert loaded.preprocess_cfg == named.preprocess_cfg and loaded.image_size == (224, 224)
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(named.score(images, "a cat"), loaded.score(images, "a cat"))


def test_pipeline_saves_as_one_directory_and_samples_the_same_codes(tiny_data, tmp_path, monkeypatch):
    words = tmp_path / "words.txt"
    words.write_text("red\nsquare\nblue\n")
    tokenizer = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16)
    pipe = DalleMiniPipeline(component("dallebart"), tokenizer, component("vqgan"), component("clip"),
                             normalizer=TextNormalizer(words, seed=3),
                             generation_config=GenerationConfig(num_images=3, top_k=8, condition_scale=3.0))
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    classes = {"model": "DalleBart", "tokenizer": "TextTokenizer", "vqgan": "VQGAN", "clip": "ClipScorer"}
    assert {k: index[k] for k in classes} == {k: ["dalle_mini_pt", c] for k, c in classes.items()}
    assert all((tmp_path / "pipe" / k).is_dir() for k in classes)  # each in the folder of its key
    generation = json.loads((tmp_path / "pipe" / "generation_config.json").read_text())
    assert generation["condition_scale"] == 3.0 and index["text_normalizer"]["seed"] == 3

    back = DalleMiniPipeline.from_pretrained(tmp_path / "pipe")
    assert back.generation_config == pipe.generation_config and back.tokenizer.max_length == 16
    assert back.normalizer("#redsquare") == pipe.normalizer("#redsquare") == " red square"
    ours, theirs = (pipe(["a red square", "#bluesquare"], seed=5),
                    back(["a red square", "#bluesquare"], seed=5))
    for a, b in zip(ours, theirs):
        assert torch.equal(a.codes, b.codes) and a.scores == b.scores

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with LocalHub(tmp_path / "hub") as hub:  # the same directory as a hub repo, one folder per component
        (hub.root / "me").mkdir(parents=True)
        (tmp_path / "pipe").rename(hub.root / "me" / "pipe")
        pulled = DalleMiniPipeline.from_pretrained("me/pipe", endpoint=hub.url, cache_dir=tmp_path / "cache")
    for a, b in zip(ours, pulled(["a red square", "#bluesquare"], seed=5)):
        assert torch.equal(a.codes, b.codes)


def test_a_directory_that_is_no_pipeline_says_what_to_pass(tmp_path):
    component("vqgan").save_pretrained(tmp_path / "vqgan")
    with pytest.raises(FileNotFoundError, match=r"is a VQGAN, not a pipeline \(it has no model_index.json\): "
                                                r"pass it as DalleMiniPipeline.from_components\(.*vqgan="):
        DalleMiniPipeline.from_pretrained(tmp_path / "vqgan")
