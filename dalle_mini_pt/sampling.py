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
shapes may follow the data: the text is cut after its last real token and each step attends over the
positions written so far. The super-conditioning mix is taken on the last hidden states, before the affine
`lm_head` (the same logits), so the head runs on half the rows.

One loop serves `generate` and `generate_stream` (the same codes, with yields of the codes so far); a
forced prefix (image completion) fills the cache in one teacher-forced pass before the loop starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from tqdm.auto import tqdm

from .huge_pages import move_to_huge_pages

if TYPE_CHECKING:
    from .model import DalleBart


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

    @property
    def guided(self) -> bool:
        return self.condition_scale != 1.0

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


def _check_inputs(model: DalleBart, rows: int, options: GenerationConfig, noise, uncond, prefix) -> None:
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


def seeded_generator(seed: Optional[int], device) -> torch.Generator:
    """The generator `generate` draws from for `seed` (a fresh random one for None); on torch-xla a CPU one,
    since XLA has no `torch.Generator`."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu" if device.type == "xla" else device)
    return generator.manual_seed(seed if seed is not None else torch.seed())


class _GumbelDraws:
    """Gumbel noise for one step of all rows: from one generator, or from (generator, rows) pairs, each
    drawing its own block of rows, so the draws of a block do not depend on what it is batched with (the
    demo server merges requests, each with its own seed, into one call)."""

    def __init__(self, generator, rows: int, shape, device):
        self.blocks = [(generator, rows)] if isinstance(generator, torch.Generator) else list(generator)
        if sum(n for _, n in self.blocks) != rows:
            raise ValueError(f"the (generator, rows) pairs cover {sum(n for _, n in self.blocks)} rows; the "
                             f"batch has {rows} (prompts x num_images)")
        self.shape, self.device, self.buffer = shape, device, torch.empty(shape, device=device)

    def __call__(self) -> torch.Tensor:
        if len(self.blocks) == 1:
            return gumbel_noise(self.shape, self.blocks[0][0], self.device, out=self.buffer)
        return torch.cat([gumbel_noise((n, self.shape[1]), g, self.device) for g, n in self.blocks])


def _cut_graph(device: torch.device) -> None:
    """On a lazy-tensor device (torch-xla), compile and run what has been traced so far."""
    if device.type == "xla":
        import torch_xla

        torch_xla.sync()


def _grad_off(device: torch.device):
    return torch.no_grad() if device.type == "xla" else torch.inference_mode()  # XLA: no inference views


def _init_cache(model: DalleBart, input_ids, attention_mask, uncond, num_images: int):
    """One encoder pass over the prompts and the unconditional prompt. Rows are grouped by the prompt they
    attend to: the images of each prompt, then (guided) one unconditional group mirroring each of those.

    Off XLA the text is cut after its last real token: padding is masked out of every attention, so it
    changes nothing but the work (a 12-token prompt encodes 5x faster than its 64 padded positions)."""
    ids, mask = input_ids, attention_mask
    prompts = input_ids.shape[0]
    if uncond is not None:
        ids = torch.cat([ids, uncond[0][:1].to(ids.device)])
        mask = torch.cat([mask, uncond[1][:1].to(ids.device)])
    if ids.device.type != "xla" and mask.any():
        length = int(mask.any(0).nonzero().max()) + 1
        ids, mask = ids[:, :length], mask[:, :length]
    states = model.encoder(ids, mask)
    if uncond is not None and prompts > 1:
        index = torch.arange(2 * prompts, device=ids.device).clamp_(max=prompts)
        states, mask = states[index], mask[index]
    return model.decoder.init_cache(states, mask, rows_per_state=num_images)


@dataclass
class _Run:
    """What the loop needs, set up once: the cache (prefilled with the prefix), the codes buffer with the
    prefix written, where sampling starts, and the noise."""

    model: "DalleBart"
    options: GenerationConfig
    cache: object
    codes: torch.Tensor  # (rows, image_length); codes[:, :start] are the prefix
    start: int
    draw: object  # () -> noise, or None when `noise` is given
    noise: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]  # (rows, image_length, image_rows) when asked for


def _prefill(model: DalleBart, cache, prefix: torch.Tensor, run: _Run) -> None:
    """The prefix through the decoder in one teacher-forced pass: the cache then holds its K/V, as if it
    had been sampled. Guided, the unconditional rows see the same prefix."""
    rows, n = run.codes.shape[0], prefix.shape[1]
    run.codes[:, :n] = prefix
    inputs = torch.cat([torch.full((rows, 1), model.config.decoder_start_token_id, device=prefix.device),
                        run.codes[:, :n - 1]], dim=1)
    guided = run.options.guided
    h = model.decoder.prefill(inputs.repeat(2, 1) if guided else inputs, cache)
    if run.logits is not None:
        if guided:
            h = (h[rows:].float() + run.options.condition_scale * (h[:rows].float() - h[rows:].float()))
        run.logits[:, :n] = model.decoder.lm_head(h.to(cache.self_k.dtype)).float()


def _start(model: DalleBart, input_ids, attention_mask, generation_config, options, uncond, generator,
           noise, prefix, return_logits) -> _Run:
    config = (generation_config or GenerationConfig()).replace(**options)
    device = input_ids.device
    rows = input_ids.shape[0] * config.num_images
    _check_inputs(model, rows, config, noise, uncond, prefix)
    cfg = model.config
    if generator is None and noise is None:
        generator = seeded_generator(config.seed, device)
    if device.type == "cpu":  # every step streams all weights: 2 MiB pages spare the TLB (huge_pages.py)
        move_to_huge_pages(model)
    with _grad_off(device):
        cache = _init_cache(model, input_ids, attention_mask, uncond if config.guided else None,
                            config.num_images)
        codes = torch.empty((rows, cfg.image_length), dtype=torch.long, device=device)
        logits = (torch.empty((rows, cfg.image_length, cfg.image_rows), device=device) if return_logits
                  else None)
        draw = None if noise is not None else _GumbelDraws(generator, rows, (rows, cfg.image_rows), device)
        run = _Run(model, config, cache, codes, 0, draw, noise, logits)
        if prefix is not None and prefix.shape[1]:
            _prefill(model, cache, prefix.to(device).expand(rows, -1), run)
            run.start = prefix.shape[1]
    return run


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
    only on a terminal.
    """
    uncond = None if uncond_input_ids is None else (uncond_input_ids, uncond_attention_mask)
    run = _start(model, input_ids, attention_mask, generation_config, options, uncond, generator, noise,
                 prefix, return_logits)
    with _grad_off(input_ids.device):
        for _ in _sample(run, progress, every=None):
            pass
    return (run.codes, run.logits) if return_logits else run.codes


def generate_stream(model: DalleBart, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    generation_config: Optional[GenerationConfig] = None, *, every: int = 16,
                    uncond_input_ids: Optional[torch.Tensor] = None,
                    uncond_attention_mask: Optional[torch.Tensor] = None, generator=None,
                    noise: Optional[torch.Tensor] = None, prefix: Optional[torch.Tensor] = None,
                    progress: Optional[bool] = False, **options):
    """`generate`, as a generator: every `every` steps it yields (codes written so far, codes) with the codes
    not yet sampled set to -1; the last yield holds all of them, the same codes `generate` returns for the
    same seed. The loop is `generate`'s own; only the yields are added."""
    if not (_whole(every) and every >= 1):
        raise ValueError(f"every={every!r} must be a whole number of steps >= 1")
    uncond = None if uncond_input_ids is None else (uncond_input_ids, uncond_attention_mask)
    run = _start(model, input_ids, attention_mask, generation_config, options, uncond, generator, noise,
                 prefix, False)
    device = input_ids.device
    steps = _sample(run, progress, every)
    while True:
        with _grad_off(device):  # entered per resume: the caller's code between yields keeps its grad mode
            written = next(steps, None)
            if written is None:
                return
            codes = run.codes.clone()
            codes[:, written:] = -1
        yield written, codes


def _sample(run: _Run, progress, every: Optional[int]):
    """The loop from `run.start`, writing `run.codes` in place; a generator that yields the number of codes
    written every `every` steps and after the last (with `every` None, never: `generate`'s fast path)."""
    model, options, cache = run.model, run.options, run.cache
    cfg, device, guided = model.config, cache.self_k.device, options.guided
    rows, start = run.codes.shape[0], run.start
    static = device.type == "xla"  # every step the same shapes, and no step length read on the host
    temperature = torch.tensor(float(options.temperature), device=device)
    scale = torch.tensor(float(options.condition_scale), device=device)
    tokens = torch.full((2 * rows if guided else rows,), cfg.decoder_start_token_id, dtype=torch.long,
                        device=device)
    if start:
        tokens.view(-1, rows).copy_(run.codes[:, start - 1])
    codes, all_logits = run.codes, run.logits
    not_a_code = torch.arange(cfg.image_rows, device=device) >= cfg.codebook_size
    position = torch.full((1,), start, dtype=torch.long, device=device)
    _cut_graph(device)

    steps = tqdm(range(start, cfg.image_length), disable=None if progress is None else not progress,
                 desc="sampling codes", leave=False)
    for t in steps:
        h = model.decoder.step(tokens, position, cache, length=None if static else t + 1)
        if guided:  # uncond + scale * (cond - uncond) of the logits, taken before the affine lm_head
            cond, uncond_h = h[:rows].float(), h[rows:].float()
            h = (uncond_h + scale * (cond - uncond_h)).to(h.dtype)
        logits = model.decoder.lm_head(h).float()
        if all_logits is not None:
            all_logits.index_copy_(1, position, logits[:, None])
        logits = apply_warpers(logits.masked_fill(not_a_code, float("-inf")), temperature, options.top_k,
                               options.top_p, options.min_p)
        g = run.noise[t].to(device) if run.noise is not None else run.draw()
        nxt = torch.argmax(logits + g, dim=-1)
        codes.index_copy_(1, position, nxt[:, None])  # indexed by the step tensor: one graph for all steps
        tokens.view(-1, rows).copy_(nxt)  # the unconditional rows mirror the conditional ones
        position += 1
        _cut_graph(device)
        if every is not None and ((t + 1 - start) % every == 0 or t + 1 == cfg.image_length):
            yield t + 1
    if every is not None and start == cfg.image_length:
        yield start  # nothing left to sample: the prefix is the whole image
