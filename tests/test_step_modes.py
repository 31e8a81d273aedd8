"""The sampler's step modes (`GenerationConfig.step_mode`) and its inf/NaN guard.

On the CPU: the fixed-shape step that a CUDA graph captures draws the dynamic step's codes, the graph modes
are refused off CUDA, a kept cache is refilled in place, a float16 overflow is an error, a model keeps one
slot (and a copy of it none), and the graph key follows each option's declaration. On a CUDA device
(skipped elsewhere): the graph replays give the eager fixed-shape step's codes for a seed, a generator or
supplied noise; a second call replays without capturing again; the loop makes no host sync per step;
moving the weights, or changing an option declared to shape the graph, means a new capture.
"""

import copy
import dataclasses
import pickle
import warnings

import pytest
import torch
from helpers import VARIANTS, tiny_config
from test_sampling import prompts, tiny_model

from dalle_mini_pt import GenerationConfig, cuda_graph
from dalle_mini_pt.generation_config import option_field
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.sampling import init_cache

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fixed_prompts(device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return [t.to(device) for t in prompts()]


def sample(model, step_mode, seed=1, device="cpu", **options):
    ids, mask, uids, umask = fixed_prompts(device)
    options = dict(num_images=3, top_k=8, seed=seed, condition_scale=3.0, uncond_input_ids=uids,
                   uncond_attention_mask=umask, return_logits=True, step_mode=step_mode, **options)
    return model.generate(ids, mask, **options)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_static_step_draws_the_dynamic_codes(variant):
    model = tiny_model(variant)
    codes, logits = sample(model, "dynamic")
    static_codes, static_logits = sample(model, "static")
    assert torch.equal(codes, static_codes)
    torch.testing.assert_close(static_logits, logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(sample(model, "auto")[0], codes)  # off XLA, auto is dynamic


def test_bad_step_modes_are_refused():
    with pytest.raises(ValueError, match="step_mode='fast' is not a step mode"):
        GenerationConfig(step_mode="fast")
    for mode in cuda_graph.MODES:
        with pytest.raises(ValueError, match=f"step_mode='{mode}'.*CUDA device; it is on cpu"):
            sample(tiny_model(), mode)


def test_a_kept_cache_is_refilled_in_place():
    model = tiny_model()
    ids, mask, uids, umask = prompts()
    with torch.inference_mode():
        fresh = init_cache(model, ids[:1], mask[:1], (uids, umask), 2, cut_text=False)
        kept = init_cache(model, ids[1:], mask[1:], (uids, umask), 2, cut_text=False)
        kept.self_k.fill_(float("nan"))
        again = init_cache(model, ids[:1], mask[:1], (uids, umask), 2, cut_text=False, out=kept)
        assert again is kept and kept.self_k.abs().sum() == 0  # a masked NaN would still reach softmax @ V
        for name in ("cross_k", "cross_v"):
            for new, old in zip(getattr(kept, name), getattr(fresh, name)):
                assert torch.equal(new, old)
        assert torch.equal(kept.cross_mask, fresh.cross_mask)
        with pytest.raises(ValueError, match="other shapes"):
            init_cache(model, ids, mask, (uids, umask), 2, cut_text=False, out=kept)


def test_a_model_keeps_one_slot_and_never_shares_a_busy_one():
    slots, cpu = tiny_model().graph_slots, torch.device("cpu")
    first = slots.take(("a",), cpu)
    during = slots.take(("a",), cpu)  # e.g. another thread generating on the same model
    assert during is not first and slots.kept is first
    first.done()
    assert slots.take(("a",), cpu) is first
    first.done()
    other = slots.take(("b",), cpu)  # other shapes: the kept slot is replaced
    assert slots.kept is other
    slots.release()
    assert slots.kept is None


def test_a_copy_or_pickle_of_a_model_keeps_no_slot():
    """A graph points at the original's tensors: a copy (an EMA, a deepcopy'd module) starts without."""
    model = tiny_model()
    model.graph_slots.take(("a",), torch.device("cpu"))
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.graph_slots is not model.graph_slots and twin.graph_slots.kept is None
    assert model.graph_slots.kept is not None


@dataclasses.dataclass(frozen=True)
class WithDummy(GenerationConfig):
    """A config with one more option that shapes the captured step (the step never reads it: only the key
    is under test), and one that does not."""

    dummy: int = option_field(0, "a test option that shapes the graph", int, graph=True)
    tensor_dummy: float = option_field(0.0, "a test option the step would read from a tensor", float,
                                       graph=False)


def test_the_graph_key_follows_the_declarations():
    base = WithDummy()
    assert base.replace(dummy=1).graph_key() != base.graph_key()  # declared: a new key
    assert base.replace(tensor_dummy=1.0).graph_key() == base.graph_key()  # declared not: the same
    for shaping in (dict(top_k=8), dict(top_p=0.9), dict(min_p=0.1), dict(num_images=2),
                    dict(step_mode="cuda_graph_compiled"), dict(condition_scale=3.0)):
        assert GenerationConfig(**shaping).graph_key() != GenerationConfig().graph_key(), shaping
    for read_from_a_tensor in (dict(temperature=0.5), dict(seed=3)):
        assert GenerationConfig(**read_from_a_tensor).graph_key() == GenerationConfig().graph_key()
    # the scale is a tensor of the loop; only whether it is 1 (the unconditional rows) shapes the step
    assert (GenerationConfig(condition_scale=3.0).graph_key()
            == GenerationConfig(condition_scale=5.0).graph_key())


def test_an_option_without_a_declaration_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Undeclared(GenerationConfig):
        plain: int = 0

    with pytest.raises(TypeError, match="Undeclared.plain does not say whether it shapes the CUDA graph"):
        Undeclared().graph_key()


def overflowing_model():
    """Fine in float32; in float16 the first layer's FFN output passes 65504 and becomes inf."""
    model = tiny_model()
    with torch.no_grad():
        model.decoder.layers[0].ffn.fc2.weight.mul_(1e6)
    return model


def test_float16_overflow_is_an_error_naming_the_fix():
    model = overflowing_model()
    codes, logits = sample(model, "dynamic")
    assert torch.isfinite(logits).all()
    for mode in ("dynamic", "static"):
        with pytest.raises(FloatingPointError, match=r"step 0 of 16 \(float16 overflowed.*bfloat16"):
            sample(model.half(), mode)
    for dtype in (torch.float16, torch.bfloat16):  # no false alarm at these dtypes' ordinary values
        assert sample(tiny_model().to(dtype), "dynamic")[0].shape == codes.shape
    with torch.no_grad():
        model.float().decoder.lm_head.weight[3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="weights or the inputs hold inf or NaN"):
        sample(model, "dynamic")


# ---------------------------------------------------------------- on a CUDA device


def cuda_model(dtype=torch.float32, **kwargs):
    return tiny_model(**kwargs).to("cuda", dtype)


def counts():
    c = cuda_graph.COUNTS
    return c.captures, c.replays, c.warmup_steps


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replays_give_the_eager_static_codes(dtype):
    model, steps = cuda_model(dtype), 16
    before = counts()
    codes, logits = sample(model, "cuda_graph", device="cuda")
    assert counts() == (before[0] + 1, before[1] + steps - 1, before[2] + 1)
    eager_codes, eager_logits = sample(model, "static", device="cuda")
    assert torch.equal(codes, eager_codes)
    torch.testing.assert_close(logits, eager_logits)  # float32 logits; the same kernels replayed
    # another seed, through the graph captured above: replays only, and still the eager codes
    again, _ = sample(model, "cuda_graph", seed=2, device="cuda")
    assert counts() == (before[0] + 1, before[1] + 2 * steps - 1, before[2] + 1)
    assert torch.equal(again, sample(model, "static", seed=2, device="cuda")[0])
    assert not torch.equal(again, codes)


@needs_cuda
def test_graph_takes_a_generator_and_supplied_noise():
    model = cuda_model()
    results = {}
    for mode in ("static", "cuda_graph"):
        g = torch.Generator(device="cuda").manual_seed(5)
        codes = sample(model, mode, seed=None, generator=g, device="cuda")[0]
        results[mode] = codes, torch.rand(4, device="cuda", generator=g)  # the state it was left in
    assert torch.equal(results["static"][0], results["cuda_graph"][0])
    assert torch.equal(results["static"][1], results["cuda_graph"][1])
    noise = torch.randn(16, 6, 41, device="cuda")
    assert torch.equal(sample(model, "static", noise=noise, device="cuda")[0],
                       sample(model, "cuda_graph", noise=noise, device="cuda")[0])
    with pytest.raises(ValueError, match="generator is on cpu"):
        sample(model, "cuda_graph", seed=None, generator=torch.Generator(), device="cuda")


@needs_cuda
def test_new_weights_mean_a_new_capture_and_release_frees_it():
    model = cuda_model()
    sample(model, "cuda_graph", device="cuda")
    captures = counts()[0]
    model.to(torch.bfloat16)  # new tensors: the old graph's pointers would be stale
    graphed, eager = (sample(model, mode, device="cuda")[0] for mode in ("cuda_graph", "static"))
    assert torch.equal(graphed, eager)
    assert counts()[0] == captures + 1
    model.graph_slots.release()
    assert model.graph_slots.kept is None


def host_syncs(model, mode) -> int:
    sample(model, mode, device="cuda")  # the first graph call captures, which synchronises
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sample(model, mode, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@needs_cuda
@pytest.mark.parametrize("mode", ["dynamic", "cuda_graph"])
def test_no_host_sync_per_step(mode):
    """Copying the prompts in, cutting the text, reading the overflow flag: a few per call, as many for 32
    steps as for 16."""
    torch.manual_seed(0)
    longer = DalleBart(tiny_config(image_length=32)).to("cuda")
    assert host_syncs(cuda_model(), mode) == host_syncs(longer, mode)


@needs_cuda
def test_float16_overflow_is_caught_inside_the_graph():
    model = overflowing_model().to("cuda", torch.float16)
    with pytest.raises(FloatingPointError, match="step 0 of 16 .float16 overflowed"):
        sample(model, "cuda_graph", device="cuda")
    with torch.no_grad():  # in place: the same weights key, so the same slot, refilled with no NaN left
        model.decoder.layers[0].ffn.fc2.weight.copy_(tiny_model().decoder.layers[0].ffn.fc2.weight)
    assert sample(model, "cuda_graph", device="cuda")[0].shape == (6, 16)


@needs_cuda
def test_compiled_graph_computes_the_same_step():
    model = cuda_model()
    noise = torch.randn(16, 6, 41, device="cuda")
    codes, logits = sample(model, "cuda_graph_compiled", noise=noise, device="cuda")
    eager_codes, eager_logits = sample(model, "static", noise=noise, device="cuda")
    torch.testing.assert_close(logits, eager_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(codes, eager_codes)


@needs_cuda
def test_graph_takes_generator_blocks_a_prefix_and_streams():
    from dalle_mini_pt.sampling import generate_stream

    model = cuda_model()
    blocks = lambda: [(torch.Generator(device="cuda").manual_seed(s), 3) for s in (7, 8)]  # noqa: E731
    assert torch.equal(sample(model, "cuda_graph", seed=None, generator=blocks(), device="cuda")[0],
                       sample(model, "static", seed=None, generator=blocks(), device="cuda")[0])
    prefix = torch.randint(0, 32, (1, 5), device="cuda")
    graphed = sample(model, "cuda_graph", prefix=prefix, device="cuda")[0]
    assert torch.equal(graphed, sample(model, "static", prefix=prefix, device="cuda")[0])
    assert torch.equal(graphed[:, :5], prefix.expand(6, -1))
    ids, mask, uids, umask = fixed_prompts("cuda")
    stream = list(generate_stream(model, ids, mask, num_images=3, top_k=8, seed=1, condition_scale=3.0,
                                  uncond_input_ids=uids, uncond_attention_mask=umask, step_mode="cuda_graph",
                                  every=4))
    assert [written for written, _ in stream] == [4, 8, 12, 16]
    assert torch.equal(stream[-1][1], sample(model, "static", device="cuda")[0])


@needs_cuda
def test_a_declared_shaping_option_means_a_new_capture():
    """A new option declared `graph=True` gets its own capture when it changes, with nothing else edited
    (the key comes from the declarations); one declared `graph=False` replays the kept graph."""
    model, base = cuda_model(), WithDummy()
    sample(model, "cuda_graph", device="cuda", generation_config=base)
    captures = counts()[0]
    sample(model, "cuda_graph", device="cuda", generation_config=base, tensor_dummy=1.0)
    assert counts()[0] == captures
    sample(model, "cuda_graph", device="cuda", generation_config=base, dummy=1)
    assert counts()[0] == captures + 1
