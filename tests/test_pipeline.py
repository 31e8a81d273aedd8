import numpy as np
import pytest
import torch
from helpers import tiny_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.pipeline import DalleMiniPipeline
from dalle_mini_pt.text_normalizer import TextNormalizer
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import CONFIG_DIR


def component(group: str, name: str):
    torch.manual_seed(0)
    return instantiate(OmegaConf.load(f"{CONFIG_DIR}/{group}/{name}.yaml"))


@pytest.fixture(scope="module")
def pipe(tiny_data):
    torch.manual_seed(0)
    model = DalleBart(tiny_config(image_length=256, image_vocab_size=32))
    tokenizer = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16)
    return DalleMiniPipeline(model, tokenizer, component("vqgan", "tiny"), component("clip", "tiny"),
                             normalizer=TextNormalizer())


def test_several_prompts_in_one_batch_ranked_by_clip(pipe):
    out = pipe(["a red square on the left", "Two BLUE circles 🙂"], num_images=3, top_k=8, seed=0)
    assert [r.prompt for r in out] == ["a red square on the left", "Two BLUE circles 🙂"]
    for r in out:
        assert len(r.images) == 3 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in r.images)
        assert r.codes.shape == (3, 256) and r.scores == sorted(r.scores, reverse=True)
        # the scores are CLIP's for those very images and that prompt
        pixels = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in r.images]) / 255
        again = pipe.clip.score(pixels, r.prompt)
        assert torch.allclose(again, torch.tensor(r.scores), atol=0.05)
    assert out[0].grid().size[0] == 3 * 32


def test_deterministic_for_a_seed_and_top_n(pipe):
    a = pipe("a blue stripe", num_images=4, seed=3, clip_top_n=2)
    b = pipe("a blue stripe", num_images=4, seed=3, clip_top_n=2)
    c = pipe("a blue stripe", num_images=4, seed=4, clip_top_n=2)
    assert (len(a[0].images) == 2 and torch.equal(a[0].codes, b[0].codes)
            and not torch.equal(a[0].codes, c[0].codes))


def test_bad_input(pipe):
    with pytest.warns(UserWarning, match="unconditional"):
        assert len(pipe([""], num_images=1, seed=0)[0].images) == 1
    with pytest.raises(ValueError, match="no prompts"):
        pipe([])
    with pytest.raises(ValueError, match="clip_top_n"):
        pipe("x", num_images=2, clip_top_n=3)
    with pytest.raises(ValueError, match="does not match the model"):
        DalleMiniPipeline(pipe.model, pipe.tokenizer, _vqgan_with(n_embed=64))


def _vqgan_with(**changes):
    from dalle_mini_pt.vqgan import VQGAN, VQGANConfig

    cfg = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/vqgan/tiny.yaml").config)
    cfg.pop("_target_")
    return VQGAN(VQGANConfig(**{**cfg, **changes}))


def test_options_by_name_meet_the_config_once(pipe):
    """`settings` is where a caller's options meet a config (the call's, the server's request); below it the
    sampler takes only a finished `GenerationConfig`."""
    import dataclasses

    from dalle_mini_pt.sampling import sample_codes

    config = pipe.settings(top_k=8)
    assert config == dataclasses.replace(pipe.generation_config, top_k=8)
    assert pipe.settings(config) is config  # a finished config passes through as it is
    with pytest.raises(TypeError, match=r"unknown sampling option\(s\) \['generation_config'\]"):
        pipe.settings(**{"generation_config": None})  # every key of a request's options is an option name
    with pytest.raises(TypeError, match="must be a GenerationConfig or None; got dict"):
        pipe("x", {"top_k": 8})
    batch = pipe.tokenize(["x"])
    with pytest.raises(TypeError, match="the sampler takes a finished GenerationConfig; got dict"):
        sample_codes(pipe.model, batch["input_ids"], batch["attention_mask"], {"top_k": 8})
