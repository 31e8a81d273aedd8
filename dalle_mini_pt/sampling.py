"""The sampling loop, image codes from prompt token ids, and `GenerationConfig`, the options it takes.

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
step and raised as an error after the loop.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from tqdm.auto import tqdm

from . import cuda_graph
from .huge_pages import move_to_huge_pages

if TYPE_CHECKING:
    from .model import DalleBart, DecoderCache

STEP_MODES = ("auto", "dynamic", "static", *cuda_graph.MODES)


def _option(default, help: str, type=None):
    return field(default=default, metadata={"help": help, "type": type or (lambda v: v)})


@dataclass(frozen=True)
class GenerationConfig:
    """Every sampling option, checked in one place. The defaults are the reference `generate`'s (plain
    sampling, no super-conditioning); each caller states its own in one place: the pipeline (the reference
    notebook's, `pipeline.DEFAULT_GENERATION`), the training callback and the embedded default's evaluation
    (their Hydra configs), the benchmark (min-dalle's). `metadata["help"]` is what the command lines show."""

    num_images: int = _option(1, "images per prompt", int)
    top_k: Optional[int] = _option(None, "sample among the k likeliest codes (default: all)", int)
    top_p: Optional[float] = _option(None, "sample among the likeliest codes holding this probability mass",
                                     float)
    min_p: Optional[float] = _option(None, "drop codes less likely than this fraction of the likeliest one",
                                     float)
    temperature: float = _option(1.0, "divides the logits: below 1 sharper, above 1 more varied", float)
    condition_scale: float = _option(1.0, "super-conditioning: uncond + scale * (cond - uncond); 1 is off",
                                     float)
    seed: Optional[int] = _option(None, "makes a run repeatable (default: a fresh random seed)", int)
    step_mode: str = _option("auto", "how each step runs: dynamic (shapes follow the codes so far), static "
                             "(one shape for every step), cuda_graph (static, captured once and replayed; "
                             "CUDA), cuda_graph_compiled (the same, torch.compile'd first); auto: static on "
                             "XLA, else dynamic", str)

    def __post_init__(self) -> None:
        def fail(key: str, problem: str, fix: str) -> None:
            raise ValueError(f"{key}={getattr(self, key)!r} {problem} ({fix})")

        if not (_whole(self.num_images) and self.num_images >= 1):
            fail("num_images", "must be a whole number >= 1", "images per prompt")
        if self.top_k is not None and not (_whole(self.top_k) and self.top_k >= 1):
            fail("top_k", "must be a whole number >= 1", "use None to disable it")
        if self.top_p is not None and not (_finite(self.top_p) and 0.0 < self.top_p <= 1.0):
            fail("top_p", "must be in (0, 1]", "use None or 1.0 to disable it")
        if self.min_p is not None and not (_finite(self.min_p) and 0.0 <= self.min_p <= 1.0):
            fail("min_p", "must be in [0, 1]", "use None or 0 to disable it")
        if not (_finite(self.temperature) and self.temperature > 0):
            fail("temperature", "must be a finite number > 0", "use top_k=1 for greedy decoding")
        if not _finite(self.condition_scale):
            fail("condition_scale", "must be a finite number",
                 "1 turns super-conditioning off; the reference notebook uses 10")
        if self.seed is not None and not _whole(self.seed):
            fail("seed", "must be a whole number", "or None for a fresh random seed")
        if self.step_mode not in STEP_MODES:
            fail("step_mode", "is not a step mode", f"use one of {STEP_MODES}")

    @property
    def guided(self) -> bool:
        return self.condition_scale != 1.0

    @property
    def graphed(self) -> bool:
        return self.step_mode in cuda_graph.MODES

    def replace(self, **changes) -> "GenerationConfig":
        """A copy with `changes`; an unknown name is refused, listing the options."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; the options are {self.names()}")
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GenerationConfig":
        return cls().replace(**values)

    def check_model(self, config) -> None:
        """The checks that need the model's config (a `DalleBartConfig`)."""
        if self.top_k is not None and self.top_k > config.codebook_size:
            raise ValueError(f"top_k={self.top_k} must be between 1 and the codebook size "
                             f"{config.codebook_size} (use None to disable it)")


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def add_arguments(parser, defaults: GenerationConfig, description: str = "") -> None:
    """One command-line flag per option (`--top-k`, …); `from_arguments` fills the unset ones from
    defaults."""
    group = parser.add_argument_group("sampling", description)
    for f in dataclasses.fields(GenerationConfig):
        group.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["type"], default=None,
                           help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)})")


def from_arguments(args, defaults: GenerationConfig) -> GenerationConfig:
    return defaults.replace(**{k: v for k in GenerationConfig.names() if (v := getattr(args, k)) is not None})


def apply_warpers(logits: torch.Tensor, temperature, top_k: Optional[int], top_p: Optional[float],
                  min_p: Optional[float] = None):
    """Temperature, top-k, top-p on (rows, vocab) float logits, in that order (HF Flax warpers), then min-p
    (not in the reference: HF's `MinPLogitsWarper`, which keeps codes of at least min_p times the best
    code's probability)."""
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # keep a token while the mass strictly before it is below top_p; the best token always stays
        keep = torch.cat([torch.ones_like(cumulative[:, :1], dtype=torch.bool),
                          cumulative[:, :-1] < top_p], dim=-1)
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(~keep, float("-inf")))
    if min_p:
        # p >= min_p * p_max  <=>  logit >= max logit + log(min_p): no softmax needed
        logits = logits.masked_fill(logits < logits.amax(-1, keepdim=True) + math.log(min_p), float("-inf"))
    return logits


def gumbel_noise(shape, generator: Optional[torch.Generator], device, out=None) -> torch.Tensor:
    if generator is not None and generator.device.type != torch.device(device).type:
        return gumbel_noise(shape, generator, generator.device).to(device)  # e.g. a CPU generator for XLA
    u = torch.rand(shape, generator=generator, device=device, out=out)
    # clamp keeps log(0) out of the way; the smallest float32 uniform is far from the tails that matter
    return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()


def _cut_graph(device: torch.device) -> None:
    """On a lazy-tensor device (torch-xla), compile and run what has been traced so far."""
    if device.type == "xla":
        import torch_xla

        torch_xla.sync()


def _check_inputs(model: DalleBart, rows: int, options: GenerationConfig, noise, uncond, device) -> None:
    cfg = model.config
    options.check_model(cfg)
    if options.guided and uncond is None:
        raise ValueError("condition_scale != 1 needs the unconditional prompt: pass uncond_input_ids and "
                         "uncond_attention_mask (the tokenised empty string)")
    expected = (cfg.image_length, rows, cfg.image_rows)
    if noise is not None and tuple(noise.shape) != expected:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected (image_length, rows, image_rows) "
                         f"= {expected}")
    if options.graphed:
        cuda_graph.check_device(device, options.step_mode)
    if device.type == "xla" and options.step_mode == "dynamic":
        raise ValueError("step_mode='dynamic' compiles a new graph at every step on XLA; use 'auto' or "
                         "'static'")


def _init_cache(model: DalleBart, input_ids, attention_mask, uncond, num_images: int, cut_text: bool,
                out: Optional[DecoderCache] = None):
    """One encoder pass over the prompts and the unconditional prompt. Rows are grouped by the prompt they
    attend to: the images of each prompt, then (guided) one unconditional group mirroring each of those.

    With `cut_text` the text is cut after its last real token: padding is masked out of every attention, so
    it changes nothing but the work (a 12-token prompt encodes 5x faster than its 64 padded positions)."""
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


def generate(
    model: DalleBart,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generation_config: Optional[GenerationConfig] = None,
    *,
    uncond_input_ids: Optional[torch.Tensor] = None,
    uncond_attention_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    return_logits: bool = False,
    progress: Optional[bool] = False,
    **options,
):
    """Sample `num_images` code grids per prompt, with `generation_config` (default `GenerationConfig()`)
    changed by any `options` given by name (`top_k=50`), as transformers' `generate` takes them.

    input_ids/attention_mask: (prompts, text_length). Rows of the result are prompt-major:
    row `p * num_images + i` is image i of prompt p. Returns codes (rows, image_length), plus, with
    `return_logits`, the per-step logits after super-conditioning and before the warpers
    (rows, image_length, image_rows). `noise` (image_length, rows, image_rows) replaces the Gumbel draws.
    `progress`: a bar over the steps; None shows it only on a terminal. Raises FloatingPointError if the
    logits turn inf or NaN (float16 overflow).
    """
    config = (generation_config or GenerationConfig()).replace(**options)
    device = input_ids.device
    rows = input_ids.shape[0] * config.num_images
    uncond = None if uncond_input_ids is None else (uncond_input_ids, uncond_attention_mask)
    _check_inputs(model, rows, config, noise, uncond, device)
    if generator is None and noise is None:
        generator = torch.Generator(device="cpu" if device.type == "xla" else device)
        generator.manual_seed(config.seed if config.seed is not None else torch.seed())
    if device.type == "cpu":  # every step streams all weights: 2 MiB pages spare the TLB (huge_pages.py)
        move_to_huge_pages(model)
    # torch-xla cannot take views of inference tensors
    with torch.no_grad() if device.type == "xla" else torch.inference_mode():
        slot = _graph_slot(model, input_ids, rows, config, noise, return_logits) if config.graphed else None
        cache = _init_cache(model, input_ids, attention_mask, uncond if config.guided else None,
                            config.num_images, cut_text=device.type != "xla" and not config.graphed,
                            out=slot.loop.cache if slot and slot.loop else None)
        return _sample(model, cache, rows, config, generator, noise, return_logits, progress, slot)


def _graph_slot(model: DalleBart, input_ids, rows: int, options: GenerationConfig, noise, return_logits):
    """The model's kept loop state and graph, if a previous call had the same shapes, options and weights;
    else a fresh slot (the text keeps its padded length in graph modes, so every prompt shares one)."""
    key = (tuple(input_ids.shape), rows, options.guided, options.top_k, options.top_p, options.min_p,
           options.step_mode, noise is not None, return_logits, cuda_graph.weights_key(model.decoder))
    return cuda_graph.slot(model.decoder, key, input_ids.device)


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


def _step(model: DalleBart, loop: _Loop, options: GenerationConfig, generator, length: Optional[int]):
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
    logits = apply_warpers(logits.masked_fill(loop.not_a_code, float("-inf")), loop.temperature,
                           options.top_k, options.top_p, options.min_p)
    if loop.noise is not None:
        g = loop.noise.index_select(0, loop.position)[0]
    else:
        g = gumbel_noise(logits.shape, generator, logits.device, out=loop.noise_buffer)
    nxt = torch.argmax(logits + g, dim=-1)
    loop.codes.index_copy_(1, loop.position, nxt[:, None])  # at the step tensor: one graph for all steps
    loop.tokens.view(-1, rows).copy_(nxt)  # the unconditional rows mirror the conditional ones
    loop.position += 1


def _sample(model: DalleBart, cache, rows: int, options: GenerationConfig, generator, noise,
            return_logits: bool, progress, slot: Optional[cuda_graph.Slot] = None):
    if slot is not None and slot.loop is None:
        slot.loop = _new_loop(model, cache, rows, options, noise, return_logits)
    loop = slot.loop if slot is not None else _new_loop(model, cache, rows, options, noise, return_logits)
    _start_loop(loop, model, options, noise)
    try:
        _run_steps(model, loop, options, generator, progress, slot)
        _raise_on_overflow(model, loop)
        codes, logits = (loop.codes, loop.logits) if slot is None else (loop.codes.clone(),
                                                                        _clone(loop.logits))
    finally:
        if slot is not None:
            slot.done()
    return (codes, logits) if return_logits else codes


def _run_steps(model: DalleBart, loop: _Loop, options: GenerationConfig, generator, progress, slot) -> None:
    device = loop.codes.device
    static = options.step_mode != "dynamic" and (options.step_mode != "auto" or device.type == "xla")
    callers = [] if generator is None else [generator]
    if slot is not None:  # the graph draws from the slot's generator, registered with it
        slot.take_generator_states(callers)
    draws = slot.generators[0] if slot is not None else generator
    _cut_graph(device)
    steps = tqdm(range(model.config.image_length), disable=None if progress is None else not progress,
                 desc="sampling codes", leave=False)
    for t in steps:
        if slot is not None:
            slot.run_step(lambda: _step(model, loop, options, draws, None),
                          compile=options.step_mode == "cuda_graph_compiled")
        else:
            _step(model, loop, options, draws, None if static else t + 1)
        _cut_graph(device)
    if slot is not None:
        slot.give_generator_states(callers)


def _clone(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clone()  # a kept loop's tensors are overwritten by the next call


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
