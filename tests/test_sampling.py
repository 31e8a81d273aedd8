import pytest
import torch
from helpers import VARIANTS, tiny_config

from dalle_mini_pt.generation_config import GenerationConfig
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.warpers import apply_warpers, gumbel_noise


def tiny_model(variant="normformer", seed=0, sharpen=True):
    torch.manual_seed(seed)
    model = DalleBart(tiny_config(variant)).eval()
    if sharpen:  # larger logits than init_std gives, so warpers and guidance have something to bite on
        with torch.no_grad():
            model.decoder.lm_head.weight.mul_(20)
    return model


def prompts():
    ids = torch.randint(3, 512, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    uncond = torch.full((1, 16), 1)
    uncond[0, :2] = torch.tensor([0, 2])
    return ids, mask, uncond, (uncond != 1).long()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_cached_steps_equal_teacher_forcing(variant, scale):
    model = tiny_model(variant, sharpen=False)
    ids, mask, uids, umask = prompts()
    codes, logits = model.generate(ids, mask, num_images=3, top_k=8, seed=1, condition_scale=scale,
                                   uncond_input_ids=uids, uncond_attention_mask=umask, return_logits=True)
    assert (teacher_forced(model, ids, mask, uids, umask, codes, scale) - logits).abs().max().item() < 1e-5
    assert len(set(codes.flatten().tolist())) > 4  # a real sample, not one repeated code


def teacher_forced(model, ids, mask, uids, umask, codes, scale):
    """The logits of one uncached forward pass over `codes` (num_images rows per prompt), super-conditioned
    as the sampler does."""
    rows = torch.arange(ids.shape[0]).repeat_interleave(codes.shape[0] // ids.shape[0])
    with torch.no_grad():
        full = model(ids[rows], mask[rows], model.shift_right(codes))
        if scale != 1.0:
            blank = model(uids.expand(len(rows), -1), umask.expand(len(rows), -1), model.shift_right(codes))
            full = blank + scale * (full - blank)
    return full


def test_top_k_1_is_argmax_over_codes_and_never_bos():
    model = tiny_model()
    ids, mask, _, _ = prompts()
    codes, logits = model.generate(ids, mask, num_images=2, top_k=1, seed=3, return_logits=True)
    assert torch.equal(codes, logits[..., :32].argmax(-1))
    # BOS (row 40) and the padding rows 32..39 get large logits here, yet are never drawn
    with torch.no_grad():
        model.decoder.lm_head.weight[32:] = model.decoder.lm_head.weight[:9] * 5
    codes, logits = model.generate(ids, mask, num_images=4, seed=0, return_logits=True)
    assert (logits.argmax(-1) >= 32).float().mean() > 0.5  # unmasked, most steps would pick a non-code
    assert codes.max() < 32


def test_same_seed_same_codes_and_generator_equivalent():
    model = tiny_model()
    ids, mask, _, _ = prompts()
    a = model.generate(ids, mask, num_images=2, seed=7, top_k=16)
    b = model.generate(ids, mask, num_images=2, seed=7, top_k=16)
    c = model.generate(ids, mask, num_images=2, seed=8, top_k=16)
    g = torch.Generator().manual_seed(7)
    d = model.generate(ids, mask, num_images=2, generator=g, top_k=16)
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.equal(a, c)


def test_supplied_noise_reproduces_a_reference_sampler():
    """With given Gumbel noise the sampler is argmax(warped logits + noise), the way
    jax.random.categorical draws; re-derive every token from the returned logits."""
    model = tiny_model()
    ids, mask, uids, umask = prompts()
    noise = gumbel_noise((16, 2, 41), torch.Generator().manual_seed(0), "cpu")
    codes, logits = model.generate(ids, mask, top_k=5, top_p=0.9, temperature=0.7, condition_scale=3.0,
                                   uncond_input_ids=uids, uncond_attention_mask=umask, noise=noise,
                                   return_logits=True)
    for t in range(16):
        masked = logits[:, t].clone()
        masked[:, 32:] = float("-inf")
        expect = torch.argmax(warp(masked, temperature=0.7, top_k=5, top_p=0.9) + noise[t], -1)
        assert torch.equal(codes[:, t], expect)


def warp(logits, **options):
    return apply_warpers(logits, GenerationConfig(**options))


def test_warpers_follow_their_definitions():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    # top-p keeps the smallest prefix whose mass reaches p (the token that crosses p stays)
    assert torch.isinf(warp(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(warp(logits, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(warp(logits, top_p=0.76)).tolist() == [[False, False, False, True]]
    assert torch.isinf(warp(logits, top_p=0.01)).tolist() == [[False, True, True, True]]
    # top-k keeps k, temperature divides
    assert torch.isinf(warp(logits, top_k=3)).sum() == 1
    hot = warp(logits, temperature=2.0).softmax(-1)
    assert torch.allclose(hot, (logits / 2).softmax(-1)) and hot[0, 0] < 0.5


def test_temperature_changes_the_sampled_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, -1)
    g = torch.Generator().manual_seed(0)
    freq = lambda t: torch.bincount(torch.argmax(warp(logits, temperature=t)  # noqa: E731
                                                 + gumbel_noise(logits.shape, g, "cpu"), -1),
                                    minlength=3) / 20000
    cold, plain = freq(0.5), freq(1.0)
    assert abs(plain[0] - 0.7) < 0.015 and abs(plain[2] - 0.1) < 0.015  # Gumbel-max draws from softmax
    expect_cold = torch.tensor([0.7, 0.2, 0.1]) ** 2
    assert torch.allclose(cold, expect_cold / expect_cold.sum(), atol=0.015)


def test_bad_options_are_refused():
    model = tiny_model()
    ids, mask, _, _ = prompts()
    with pytest.raises(ValueError, match="top_k=33"):
        model.generate(ids, mask, top_k=33)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, mask, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, mask, temperature=0)
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(ids, mask, condition_scale=3.0)
    with pytest.raises(ValueError, match="noise has shape"):
        model.generate(ids, mask, noise=torch.zeros(16, 1, 41))
