"""Where a yaml file and a Python dataclass both state defaults, they agree: the files that restate a
dataclass's defaults give its default object (apart from the fields each sets on purpose), and the files
that list only what differs from a dataclass's defaults list nothing that is the default."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.generation_config import GenerationConfig
from dalle_mini_pt.train import CONFIG_DIR
from dalle_mini_pt.vqgan import VQGANConfig

# (file under conf/, the node that builds the dataclass, the dataclass, the fields the file sets otherwise)
RESTATED = [
    # DalleBartConfig's defaults are dalle-mini/dalle-mini's architecture; the release's text normalisation
    # and its VQGAN's pixel range are properties of the release, not of the class
    ("model/dalle_mini.yaml", "net.config", DalleBartConfig,
     dict(normalize_text=True, vqgan_pixel_range="zero_to_one")),
    ("vqgan/imagenet_f16_16384.yaml", "config", VQGANConfig, {}),
]


@pytest.mark.parametrize("path, node, cls, own", RESTATED, ids=[r[0] for r in RESTATED])
def test_a_file_restating_a_dataclass_gives_its_defaults(path, node, cls, own):
    values = OmegaConf.to_container(OmegaConf.select(OmegaConf.load(f"{CONFIG_DIR}/{path}"), node))
    values.pop("_target_", None)
    assert cls(**values) == dataclasses.replace(cls(), **own)


def test_the_generation_callback_lists_only_sampling_options_that_differ_from_the_defaults():
    settings = OmegaConf.load(f"{CONFIG_DIR}/callbacks/generation.yaml").generation
    fields = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
    sampling = {k: v for k, v in settings.items() if k in fields}
    assert sampling, "the callback's file sets no sampling option: the comment above them is stale"
    assert {k: v for k, v in sampling.items() if v == fields[k]} == {}
