"""The sampling loop, image codes from prompt token ids, with the options of `GenerationConfig`.

Semantics follow the reference `DalleBart.generate`: super-conditioning mixes raw logits,
`uncond + scale * (cond - uncond)`, before the warpers (temperature, then top-k, then top-p), and a token
is drawn as `argmax(logits + gumbel_noise)`, which is what `jax.random.categorical` does; supplying that
noise reproduces a reference run step for step. Two deliberate differences: ids outside the VQGAN codebook
(BOS, mega's padding rows) are excluded before the warpers, so they can never be drawn, and top-k/top-p use
the Flax warpers' definitions exactly.

Speed and fixed shapes (XLA, CUDA graphs): conditional and unconditional rows share one batch, the
cross-attention K/V are computed once per prompt, the self-attention K/V cache is preallocated and written
at the step index, and the step index is a tensor. On torch-xla each step is cut into its own graph (one
compile serves all 256 steps, instead of one program unrolled over them), and the Gumbel noise is drawn on
the CPU, since XLA has no `torch.Generator`; a seed then gives the same codes on both devices. Off XLA the
shapes may follow the data (`step_mode="dynamic"`, the default there): the text is cut after its last real
token and each step attends over the positions written so far. Every tensor a step touches lives in one
`_Loop`, so the fixed-shape step can also be captured in a CUDA graph and replayed (`cuda_graph.py`). The
super-conditioning mix is taken on the last hidden states, before the affine `lm_head` (the same logits),
so the head runs on half the rows. Non-finite logits (float16 overflow) are flagged on the device at each
step and raised as an error after the loop (and at each yield of a stream).

One loop serves `generate` and `generate_stream` (the same codes, with yields of the codes so far); a
forced prefix (image completion) fills the cache in one teacher-forced pass before the loop starts. Those
two merge options given by name into the config, once; `sample_codes` / `stream_codes` and all below them
take the finished `GenerationConfig`. Sampling reads the model and changes nothing of it: the graph modes
keep their graph in the model's `graph_slots`, and huge-page placement is a step of loading
(`huge_pages.move_to_huge_pages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from tqdm.auto import tqdm

from . import cuda_graph
from .generation_config import GenerationConfig, is_whole, with_options
from .warpers import GumbelDraws, apply_warpers, generator_blocks, seeded_generator

if TYPE_CHECKING:
    from .model import DalleBart, DecoderCache


def _check_inputs(model: DalleBart, rows: int, options: GenerationConfig, noise, uncond, prefix,
                 device) -> None:
    cfg = model.config
    options.check_model(cfg)
    if options.guided and uncond is None:
        raise ValueError("condition_scale != 1 needs the unconditional prompt: pass uncond_input_ids and "
                         "uncond_attention_mask (the tokenised empty string)")
    expected = (cfg.image_length, rows, cfg.image_rows)
    if noise is not None and tuple(noise.shape) != expected:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected (image_length, rows, image_rows) "
                         f"= {expected}")
    if prefix is not None and (prefix.dim() != 2 or prefix.shape[0] not in (1, rows)
                               or prefix.shape[1] > cfg.image_length):
        raise ValueError(f"prefix has shape {tuple(prefix.shape)}; expected (1 or rows={rows}, n) with "
                         f"n <= image_length={cfg.image_length}: the first n codes of each image")
    if prefix is not None and prefix.numel() and (prefix.min() < 0 or prefix.max() >= cfg.codebook_size):
        raise ValueError(f"prefix codes must lie in 0..{cfg.codebook_size - 1} (the codebook)")
    if options.graphed:
        cuda_graph.check_device(device, options.step_mode)
    if device.type == "xla" and options.step_mode == "dynamic":
        raise ValueError("step_mode='dynamic' compiles a new graph at every step on XLA; use 'auto' or "
                         "'static'")


def _cut_graph(device: torch.device) -> None:
    """On a lazy-tensor device (torch-xla), compile and run what has been traced so far."""
    if device.type == "xla":
        import torch_xla

        torch_xla.sync()


def _grad_off(device: torch.device):
    return torch.no_grad() if device.type == "xla" else torch.inference_mode()  # XLA: no inference views


def init_cache(model: DalleBart, input_ids, attention_mask, uncond, num_images: int, cut_text: bool,
                out: Optional[DecoderCache] = None):
    """One encoder pass over the prompts and the unconditional prompt. Rows are grouped by the prompt they
    attend to: the images of each prompt, then (guided) one unconditional group mirroring each of those.

    With `cut_text` the text is cut after its last real token: padding is masked out of every attention, so
    it changes nothing but the work (docs/cpu_decoding.md measures how much)."""
    ids, mask = input_ids, attention_mask
    prompts = input_ids.shape[0]
    if uncond is not None:
        ids = torch.cat([ids, uncond[0][:1].to(ids.device)])
        mask = torch.cat([mask, uncond[1][:1].to(ids.device)])
    if cut_text and mask.any():
        length = int(mask.any(0).nonzero().max()) + 1
        ids, mask = ids[:, :length], mask[:, :length]
    states = model.encoder(ids, mask)
    if uncond is not None and prompts > 1:
        index = torch.arange(2 * prompts, device=ids.device).clamp_(max=prompts)
        states, mask = states[index], mask[index]
    return model.decoder.init_cache(states, mask, rows_per_state=num_images, out=out)


@dataclass
class _Loop:
    """Every tensor a decoding step reads or writes, so that a captured step can be replayed on them."""

    cache: DecoderCache
    tokens: torch.Tensor  # (rows or 2 rows,) the last codes, fed back in; unconditional rows mirror them
    codes: torch.Tensor  # (rows, image_length)
    position: torch.Tensor  # (1,) the step index
    temperature: torch.Tensor
    scale: torch.Tensor
    not_a_code: torch.Tensor  # (image_rows,) ids outside the codebook, never drawn
    noise_buffer: torch.Tensor  # (rows, image_rows) this step's Gumbel draws
    overflow_at: torch.Tensor  # (1,) the first step with non-finite logits; image_length while there is none
    noise: Optional[torch.Tensor]  # supplied noise on the device
    logits: Optional[torch.Tensor]  # (rows, image_length, image_rows) with return_logits


def _new_loop(model: DalleBart, cache, rows: int, options: GenerationConfig, noise, return_logits) -> _Loop:
    cfg, device = model.config, cache.self_k.device
    scalar = lambda dtype: torch.zeros(1, dtype=dtype, device=device)  # noqa: E731
    return _Loop(
        cache=cache, tokens=torch.empty((2 * rows if options.guided else rows,), dtype=torch.long,
                                        device=device),
        codes=torch.empty((rows, cfg.image_length), dtype=torch.long, device=device),
        position=scalar(torch.long), temperature=scalar(torch.float32)[0], scale=scalar(torch.float32)[0],
        not_a_code=torch.arange(cfg.image_rows, device=device) >= cfg.codebook_size,
        noise_buffer=torch.empty((rows, cfg.image_rows), device=device), overflow_at=scalar(torch.long),
        noise=None if noise is None else torch.empty(noise.shape, device=device),
        logits=(torch.empty((rows, cfg.image_length, cfg.image_rows), device=device) if return_logits
                else None))


def _start_loop(loop: _Loop, model: DalleBart, options: GenerationConfig, noise) -> None:
    """The values a generation starts from, written into the loop's tensors (a kept loop's included)."""
    loop.tokens.fill_(model.config.decoder_start_token_id)
    loop.position.zero_()
    loop.temperature.fill_(float(options.temperature))
    loop.scale.fill_(float(options.condition_scale))
    loop.overflow_at.fill_(model.config.image_length)
    if noise is not None:
        loop.noise.copy_(noise)


def _prefill(model: DalleBart, loop: _Loop, prefix: torch.Tensor, options: GenerationConfig) -> None:
    """The prefix through the decoder in one teacher-forced pass: the cache then holds its K/V, as if it
    had been sampled, and the loop goes on from the prefix's end. Guided, the unconditional rows see the
    same prefix."""
    rows, n = loop.codes.shape[0], prefix.shape[1]
    loop.codes[:, :n] = prefix
    inputs = torch.cat([torch.full((rows, 1), model.config.decoder_start_token_id, device=prefix.device),
                        loop.codes[:, :n - 1]], dim=1)
    h = model.decoder.prefill(inputs.repeat(2, 1) if options.guided else inputs, loop.cache)
    if loop.logits is not None:
        if options.guided:
            h = (h[rows:].float() + options.condition_scale * (h[:rows].float() - h[rows:].float()))
        loop.logits[:, :n] = model.decoder.lm_head(h.to(loop.cache.self_k.dtype)).float()
    loop.position.fill_(n)
    loop.tokens.view(-1, rows).copy_(loop.codes[:, n - 1])


@dataclass
class _Run:
    """One call of the loop: the model and options, the loop's tensors (kept between calls in graph modes),
    where sampling starts (after a prefix), the draws, and the caller's generators (graph modes draw from
    the slot's own and hand their states back at the end)."""

    model: "DalleBart"
    options: GenerationConfig
    loop: _Loop
    start: int
    draw: Optional[GumbelDraws]  # None when `noise` is given
    slot: Optional[cuda_graph.Slot]
    generators: list

    @property
    def codes(self) -> torch.Tensor:  # (rows, image_length); codes[:, :start] are the prefix
        return self.loop.codes


def _graph_slot(model: DalleBart, input_ids, options: GenerationConfig, noise, return_logits, blocks):
    """The model's kept loop state and graph, if a previous call had the same key; else a fresh slot. The
    key: the options that shape the captured step (their fields say so, `GenerationConfig.graph_key`), the
    call's shapes and inputs (the text keeps its padded length in graph modes, so every prompt shares one),
    and the weights the graph reads."""
    key = (options.graph_key(), tuple(input_ids.shape), noise is not None, return_logits,
           tuple(n for _, n in blocks), cuda_graph.weights_key(model.decoder))
    return model.graph_slots.take(key, input_ids.device, max(len(blocks), 1))


def _start(model: DalleBart, input_ids, attention_mask, config: GenerationConfig, uncond, generator, noise,
           prefix, return_logits) -> _Run:
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"the sampler takes a finished GenerationConfig; got {type(config).__name__} (give "
                        "options by name to generate / generate_stream, which merge them)")
    device = input_ids.device
    rows = input_ids.shape[0] * config.num_images
    _check_inputs(model, rows, config, noise, uncond, prefix, device)
    if generator is None and noise is None:
        generator = seeded_generator(config.seed, device)
    blocks = [] if noise is not None else generator_blocks(generator, rows)
    with _grad_off(device):
        slot = (_graph_slot(model, input_ids, config, noise, return_logits, blocks) if config.graphed
                else None)
        cache = init_cache(model, input_ids, attention_mask, uncond if config.guided else None,
                            config.num_images, cut_text=device.type != "xla" and not config.graphed,
                            out=slot.loop.cache if slot and slot.loop else None)
        loop = (slot.loop if slot and slot.loop
                else _new_loop(model, cache, rows, config, noise, return_logits))
        _start_loop(loop, model, config, noise)
        if prefix is not None and prefix.shape[1]:
            _prefill(model, loop, prefix.to(device).expand(rows, -1), config)
    callers = [g for g, _ in blocks]
    if slot is not None:  # the graph draws from the slot's generators, registered with it
        slot.loop = loop
        slot.take_generator_states(callers)
        blocks = [(mine, n) for mine, (_, n) in zip(slot.generators, blocks)]
    return _Run(model, config, loop, 0 if prefix is None else prefix.shape[1],
                GumbelDraws(blocks, loop.noise_buffer) if blocks else None, slot, callers)


def sample_codes(model: DalleBart, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 config: GenerationConfig, *, uncond_input_ids: Optional[torch.Tensor] = None,
                 uncond_attention_mask: Optional[torch.Tensor] = None, generator=None,
                 noise: Optional[torch.Tensor] = None, prefix: Optional[torch.Tensor] = None,
                 return_logits: bool = False, progress: Optional[bool] = False):
    """`generate` with a finished `config` (no options by name): what the pipeline calls. The model is only
    read; in graph modes it keeps the graph and the loop state in `model.graph_slots`."""
    uncond = None if uncond_input_ids is None else (uncond_input_ids, uncond_attention_mask)
    run = _start(model, input_ids, attention_mask, config, uncond, generator, noise, prefix, return_logits)
    try:
        with _grad_off(input_ids.device):
            for _ in _sample(run, progress, every=None):
                pass
            codes, logits = _finish(run)
    finally:
        _release(run)
    return (codes, logits) if return_logits else codes


def generate(
    model: DalleBart,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generation_config: Optional[GenerationConfig] = None,
    *,
    uncond_input_ids: Optional[torch.Tensor] = None,
    uncond_attention_mask: Optional[torch.Tensor] = None,
    generator=None,
    noise: Optional[torch.Tensor] = None,
    prefix: Optional[torch.Tensor] = None,
    return_logits: bool = False,
    progress: Optional[bool] = False,
    **options,
):
    """Sample `num_images` code grids per prompt, with `generation_config` (default `GenerationConfig()`)
    changed by any `options` given by name (`top_k=50`), as transformers' `generate` takes them.

    input_ids/attention_mask: (prompts, text_length). Rows of the result are prompt-major:
    row `p * num_images + i` is image i of prompt p. Returns codes (rows, image_length), plus, with
    `return_logits`, the per-step logits after super-conditioning and before the warpers
    (rows, image_length, image_rows). `noise` (image_length, rows, image_rows) replaces the Gumbel draws;
    `generator` is one `torch.Generator` or (generator, rows) pairs, each drawing for its block of rows.
    `prefix` (1 or rows, n): the first n codes of every image are these, not sampled (image completion);
    they pass through the decoder in one teacher-forced pass. `progress`: a bar over the steps; None shows it
    only on a terminal. Raises FloatingPointError if the logits turn inf or NaN (float16 overflow).
    """
    return sample_codes(model, input_ids, attention_mask, with_options(generation_config, options),
                        uncond_input_ids=uncond_input_ids, uncond_attention_mask=uncond_attention_mask,
                        generator=generator, noise=noise, prefix=prefix, return_logits=return_logits,
                        progress=progress)


def stream_codes(model: DalleBart, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 config: GenerationConfig, *, every: int = 16,
                 uncond_input_ids: Optional[torch.Tensor] = None,
                 uncond_attention_mask: Optional[torch.Tensor] = None, generator=None,
                 noise: Optional[torch.Tensor] = None, prefix: Optional[torch.Tensor] = None,
                 progress: Optional[bool] = False):
    """`generate_stream` with a finished `config` (no options by name): what the pipeline calls."""
    if not (is_whole(every) and every >= 1):
        raise ValueError(f"every={every!r} must be a whole number of steps >= 1")
    uncond = None if uncond_input_ids is None else (uncond_input_ids, uncond_attention_mask)
    run = _start(model, input_ids, attention_mask, config, uncond, generator, noise, prefix, False)
    device = input_ids.device
    steps = _sample(run, progress, every)
    try:
        while True:
            # entered per resume: the caller's code between yields keeps its grad mode
            with _grad_off(device):
                written = next(steps, None)
                if written is None:
                    _finish(run)
                    return
                _raise_on_overflow(run.model, run.loop)
                codes = run.codes.clone()
                codes[:, written:] = -1
            yield written, codes
    finally:
        _release(run)


def generate_stream(model: DalleBart, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    generation_config: Optional[GenerationConfig] = None, *, every: int = 16,
                    uncond_input_ids: Optional[torch.Tensor] = None,
                    uncond_attention_mask: Optional[torch.Tensor] = None, generator=None,
                    noise: Optional[torch.Tensor] = None, prefix: Optional[torch.Tensor] = None,
                    progress: Optional[bool] = False, **options):
    """`generate`, as a generator: every `every` steps it yields (codes written so far, codes) with the codes
    not yet sampled set to -1; the last yield holds all of them, the same codes `generate` returns for the
    same seed. The loop is `generate`'s own; only the yields are added."""
    return stream_codes(model, input_ids, attention_mask, with_options(generation_config, options),
                        every=every, uncond_input_ids=uncond_input_ids,
                        uncond_attention_mask=uncond_attention_mask, generator=generator, noise=noise,
                        prefix=prefix, progress=progress)


def _step(model: DalleBart, loop: _Loop, options: GenerationConfig, draw, length: Optional[int]) -> None:
    """One code for every row, at `loop.position`; `length` (position + 1, on the host) for the dynamic
    shapes, None for the one shape of every step."""
    rows = loop.codes.shape[0]
    h = model.decoder.step(loop.tokens, loop.position, loop.cache, length=length)
    if options.guided:  # uncond + scale * (cond - uncond) of the logits, taken before the affine lm_head
        cond, uncond_h = h[:rows].float(), h[rows:].float()
        h = (uncond_h + loop.scale * (cond - uncond_h)).to(h.dtype)
    logits = model.decoder.lm_head(h).float()
    # any inf or NaN makes the sum non-finite: one reduction per step, read on the host after the loop
    bad = ~torch.isfinite(logits.sum())
    torch.minimum(loop.overflow_at, torch.where(bad, loop.position, loop.overflow_at), out=loop.overflow_at)
    if loop.logits is not None:
        loop.logits.index_copy_(1, loop.position, logits[:, None])
    logits = apply_warpers(logits.masked_fill(loop.not_a_code, float("-inf")), options, loop.temperature)
    g = loop.noise.index_select(0, loop.position)[0] if loop.noise is not None else draw()
    nxt = torch.argmax(logits + g, dim=-1)
    loop.codes.index_copy_(1, loop.position, nxt[:, None])  # at the step tensor: one graph for all steps
    loop.tokens.view(-1, rows).copy_(nxt)  # the unconditional rows mirror the conditional ones
    loop.position += 1


def _sample(run: _Run, progress, every: Optional[int]):
    """The loop from `run.start`, writing `run.loop` in place; a generator that yields the number of codes
    written every `every` steps and after the last (with `every` None, never: `generate`'s fast path)."""
    model, loop, options, start = run.model, run.loop, run.options, run.start
    cfg, device = model.config, loop.codes.device
    static = options.step_mode != "dynamic" and (options.step_mode != "auto" or device.type == "xla")
    _cut_graph(device)
    steps = tqdm(range(start, cfg.image_length), disable=None if progress is None else not progress,
                 desc="sampling codes", leave=False)
    for t in steps:
        if run.slot is not None:
            run.slot.run_step(lambda: _step(model, loop, options, run.draw, None),
                              compile=options.step_mode == "cuda_graph_compiled")
        else:
            _step(model, loop, options, run.draw, None if static else t + 1)
        _cut_graph(device)
        if every is not None and ((t + 1 - start) % every == 0 or t + 1 == cfg.image_length):
            yield t + 1
    if every is not None and start == cfg.image_length:
        yield start  # nothing left to sample: the prefix is the whole image


def _finish(run: _Run):
    """After the last step: the caller's generators moved on, the overflow check, and the codes and logits
    (copies, when the tensors are kept for the next call)."""
    if run.slot is not None:
        run.slot.give_generator_states(run.generators)
    _raise_on_overflow(run.model, run.loop)
    if run.slot is None:
        return run.loop.codes, run.loop.logits
    return run.loop.codes.clone(), None if run.loop.logits is None else run.loop.logits.clone()


def _release(run: _Run) -> None:
    if run.slot is not None:
        run.slot.done()


def _raise_on_overflow(model: DalleBart, loop: _Loop) -> None:
    """An error, not a quiet retry in another dtype: a retry would double the time and (float32) the weight
    memory behind the caller's back, and hide that this model does not fit float16's range."""
    first, steps = int(loop.overflow_at), model.config.image_length  # the loop's one read on the host
    if first >= steps:
        return
    if model.decoder.lm_head.weight.dtype is torch.float16:
        cause = "float16 overflowed: activations beyond its largest value, 65504, became inf"
        fix = ("run the model in bfloat16 (model.to(torch.bfloat16): float32's range, float16's speed on "
               "GPUs since Ampere) or in float32")
    else:
        cause = "the weights or the inputs hold inf or NaN"
        fix = "check the checkpoint with torch.isfinite on every parameter"
    raise FloatingPointError(f"the logits turned inf/NaN at step {first} of {steps} ({cause}); the codes "
                             f"would be garbage. Fix: {fix}.")
