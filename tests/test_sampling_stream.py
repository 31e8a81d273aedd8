"""The streaming generator, the forced prefix (image completion) and per-block generators: the three ways
the demo drives the sampler, each checked against plain `generate`."""

import pytest
import torch
from test_sampling import prompts, teacher_forced, tiny_model

from dalle_mini_pt.sampling import generate_stream


def test_stream_yields_partial_codes_and_ends_with_generates_codes():
    model = tiny_model()
    ids, mask, uids, umask = prompts()
    kw = dict(num_images=2, top_k=8, condition_scale=3.0, seed=5, uncond_input_ids=uids,
              uncond_attention_mask=umask)
    expected = model.generate(ids, mask, **kw)
    steps = list(generate_stream(model, ids, mask, every=5, **kw))
    assert [n for n, _ in steps] == [5, 10, 15, 16]
    for n, codes in steps:
        assert torch.equal(codes[:, :n], expected[:, :n]) and (codes[:, n:] == -1).all()
    assert torch.equal(steps[-1][1], expected)
    assert torch.is_grad_enabled()  # the caller's grad mode is left alone between yields
    with pytest.raises(ValueError, match="every=0"):
        next(generate_stream(model, ids, mask, every=0))


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_a_prefix_is_kept_and_prefilled_as_if_it_had_been_sampled(scale):
    model = tiny_model(sharpen=False)
    ids, mask, uids, umask = prompts()
    prefix = torch.randint(0, 32, (1, 6))
    kw = dict(num_images=3, top_k=8, condition_scale=scale, uncond_input_ids=uids,
              uncond_attention_mask=umask)
    codes, logits = model.generate(ids, mask, seed=2, prefix=prefix, return_logits=True, **kw)
    assert (codes[:, :6] == prefix).all()
    # the one prefill pass left the cache as teacher forcing would: every later step's logits match it
    assert (teacher_forced(model, ids, mask, uids, umask, codes, scale) - logits).abs().max().item() < 1e-5
    again = model.generate(ids, mask, seed=2, prefix=prefix, **kw)
    other = model.generate(ids, mask, seed=3, prefix=prefix, **kw)
    assert torch.equal(codes, again) and not torch.equal(codes[:, 6:], other[:, 6:])
    # per-row prefixes, an empty one (plain generation) and a whole-image one
    per_row = torch.randint(0, 32, (6, 4))
    assert torch.equal(model.generate(ids, mask, seed=2, prefix=per_row, **kw)[:, :4], per_row)
    assert torch.equal(model.generate(ids, mask, seed=2, prefix=prefix[:, :0], **kw),
                       model.generate(ids, mask, seed=2, **kw))
    whole = torch.randint(0, 32, (1, 16))
    assert (model.generate(ids, mask, seed=2, prefix=whole, **kw) == whole).all()
    streamed = list(generate_stream(model, ids, mask, every=4, seed=2, prefix=prefix, **kw))
    assert [n for n, _ in streamed] == [10, 14, 16] and torch.equal(streamed[-1][1], codes)


def test_bad_prefixes_are_refused():
    model = tiny_model()
    ids, mask, _, _ = prompts()
    with pytest.raises(ValueError, match="prefix has shape"):
        model.generate(ids, mask, prefix=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="codebook"):
        model.generate(ids, mask, prefix=torch.full((1, 2), 32))


def test_each_block_of_rows_draws_from_its_own_generator():
    """Requests merged into one call, each with its own seed, get the codes they get alone."""
    model = tiny_model()
    ids, mask, _, _ = prompts()
    alone = [model.generate(ids[i:i + 1], mask[i:i + 1], num_images=2, top_k=16, seed=s)
             for i, s in enumerate([11, 12])]
    pairs = [(torch.Generator().manual_seed(s), 2) for s in [11, 12]]
    together = model.generate(ids, mask, num_images=2, top_k=16, generator=pairs)
    assert torch.equal(together, torch.cat(alone))
    with pytest.raises(ValueError, match="cover 2 rows"):
        model.generate(ids, mask, num_images=2, generator=pairs[:1])
