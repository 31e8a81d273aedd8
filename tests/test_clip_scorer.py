"""ClipScorer on a tiny random open_clip model built from conf/clip/tiny.yaml; nothing may be downloaded."""

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from dalle_mini_pt.clip_scorer import ClipScorer

CONF = Path(__file__).resolve().parents[1] / "conf" / "clip"
PROMPTS = ["a red square", "a photo of a dog", "an astronaut riding a horse", "a blue circle"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def scorer():
    return instantiate(OmegaConf.load(CONF / "tiny.yaml"))


@pytest.fixture
def images():
    return torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(0))


def test_score_is_the_diagonal_of_the_similarity_matrix(scorer, images):
    matrix = scorer.similarity_matrix(images, PROMPTS)
    assert matrix.shape == (4, 4)
    torch.testing.assert_close(scorer.score(images, PROMPTS), matrix.diagonal())
    torch.testing.assert_close(scorer.score(images, PROMPTS[1]), matrix[:, 1])
    assert matrix.std() > 0  # depends on both image and prompt


def test_score_is_cosine_times_logit_scale(scorer, images):
    cosine = scorer.encode_images(images) @ scorer.encode_text(PROMPTS).T
    expected = scorer.model.logit_scale.exp() * cosine
    torch.testing.assert_close(scorer.similarity_matrix(images, PROMPTS), expected)
    assert cosine.abs().max() <= 1 + 1e-5


def test_rank_is_consistent_with_score(scorer, images):
    scores = scorer.score(images, "a photo of a dog")
    order, ranked = scorer.rank(images, "a photo of a dog")
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(ranked, scores[order])
    assert torch.all(ranked[:-1] >= ranked[1:])
    top, top_scores = scorer.rank(images, "a photo of a dog", top_n=2)
    assert top.tolist() == order[:2].tolist()
    torch.testing.assert_close(top_scores, ranked[:2])


def test_batching_does_not_change_scores(scorer, images):
    full = scorer.score(images, PROMPTS)
    scorer.batch_size = 1
    torch.testing.assert_close(scorer.score(images, PROMPTS), full)


def test_pil_images_score_like_tensors(scorer, images):
    quantised = (images * 255).round() / 255
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
    torch.testing.assert_close(scorer.score(pil, PROMPTS), scorer.score(quantised, PROMPTS))


def test_preprocess_resizes_short_side_center_crops_and_normalises(scorer):
    image = torch.zeros(1, 3, 32, 64)
    image[..., 16:48] = 1.0  # the central square is white, the sides black
    pixels = scorer.preprocess(image)
    assert pixels.shape == (1, 3, 32, 32)
    mean = torch.tensor(scorer.preprocess_cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(scorer.preprocess_cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels, ((1 - mean) / std).expand(1, 3, 32, 32))


def test_preprocess_matches_open_clip_pil_transform(scorer):
    from open_clip.transform import image_transform_v2

    # a smooth image, so that PIL's and torch's resampling kernels agree up to rounding
    coarse = torch.rand(1, 3, 6, 9, generator=torch.Generator().manual_seed(1))
    smooth = torch.nn.functional.interpolate(coarse, size=(60, 90), mode="bilinear")[0]
    pil = Image.fromarray((smooth.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    reference = image_transform_v2(scorer.preprocess_cfg, is_train=False)(pil)
    assert (scorer.preprocess([pil])[0] - reference).abs().max() < 0.03


def test_mismatched_prompt_count_is_an_error(scorer, images):
    with pytest.raises(ValueError, match="4 images but 2 prompts"):
        scorer.score(images, PROMPTS[:2])


def test_results_carry_no_autograd_graph(scorer, images):
    assert not scorer.score(images, PROMPTS).requires_grad


def test_seed_fixes_the_random_weights(images):
    cfg = OmegaConf.load(CONF / "tiny.yaml")
    a, b = instantiate(cfg), instantiate(cfg)
    torch.testing.assert_close(a.score(images, PROMPTS), b.score(images, PROMPTS))
    c = instantiate(cfg, seed=1)
    assert not torch.allclose(a.score(images, PROMPTS), c.score(images, PROMPTS))


def test_too_small_vocabulary_is_an_error():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "tiny.yaml").model_cfg)
    cfg["text_cfg"]["vocab_size"] = 1000
    with pytest.raises(ValueError, match="smaller than the CLIP BPE vocabulary"):
        ClipScorer.from_config(cfg)


def test_unknown_model_name_lists_available_models():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'") as err:
        ClipScorer.from_open_clip("ViT-Q-99", pretrained=None)
    assert "ViT-B-32" in str(err.value) and "ViT-L-14" in str(err.value)


def test_unknown_tag_lists_available_tags():
    with pytest.raises(ValueError, match="unknown pretrained tag 'not-a-tag'") as err:
        ClipScorer.from_open_clip("ViT-B-32", pretrained="not-a-tag")
    assert "openai" in str(err.value) and "laion2b_s34b_b79k" in str(err.value)


def test_vit_b_32_config_builds_offline_without_weights():
    scorer = instantiate(OmegaConf.load(CONF / "vit_b_32.yaml"), pretrained=None)
    assert scorer.image_size == (224, 224)
    assert scorer.tokenizer(["a cat"]).shape == (1, 77)
    assert scorer.score(torch.rand(2, 3, 256, 256), "a cat").shape == (2,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scores_on_cuda_match_cpu(scorer, images):
    cpu = scorer.score(images, PROMPTS)
    torch.testing.assert_close(scorer.to("cuda").score(images, PROMPTS).cpu(), cpu, atol=1e-3, rtol=1e-3)
