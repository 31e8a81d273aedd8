"""The sampling loop: image codes from prompt token ids.

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
"""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from .huge_pages import move_to_huge_pages
from .model import DalleBart


def apply_warpers(logits: torch.Tensor, temperature, top_k: Optional[int], top_p: Optional[float]):
    """Temperature, top-k, top-p on (rows, vocab) float logits, in that order (HF Flax warpers)."""
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


def _check_options(model: DalleBart, rows: int, top_k, top_p, temperature, condition_scale, noise, uncond):
    cfg = model.config
    if top_k is not None and not 1 <= top_k <= cfg.codebook_size:
        raise ValueError(f"top_k={top_k} must be between 1 and the codebook size {cfg.codebook_size} "
                         "(use None to disable it)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (use None or 1.0 to disable it)")
    if float(temperature) <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use top_k=1 for greedy decoding)")
    if condition_scale != 1.0 and uncond is None:
        raise ValueError("condition_scale != 1 needs the unconditional prompt: pass uncond_input_ids and "
                         "uncond_attention_mask (the tokenised empty string)")
    expected = (cfg.image_length, rows, cfg.image_rows)
    if noise is not None and tuple(noise.shape) != expected:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected (image_length, rows, image_rows) "
                         f"= {expected}")


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


def generate(
    model: DalleBart,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_images: int = 1,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    temperature: float = 1.0,
    condition_scale: float = 1.0,
    uncond_input_ids: Optional[torch.Tensor] = None,
    uncond_attention_mask: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    return_logits: bool = False,
    progress: Optional[bool] = False,
):
    """Sample `num_images` code grids per prompt.

    input_ids/attention_mask: (prompts, text_length). Rows of the result are prompt-major:
    row `p * num_images + i` is image i of prompt p. Returns codes (rows, image_length), plus, with
    `return_logits`, the per-step logits after super-conditioning and before the warpers
    (rows, image_length, image_rows). `noise` (image_length, rows, image_rows) replaces the Gumbel draws.
    `progress`: a bar over the steps; None shows it only on a terminal.
    """
    device = input_ids.device
    rows = input_ids.shape[0] * num_images
    uncond = None if uncond_input_ids is None else (uncond_input_ids, uncond_attention_mask)
    _check_options(model, rows, top_k, top_p, temperature, condition_scale, noise, uncond)
    guided = condition_scale != 1.0
    if generator is None and noise is None:
        generator = torch.Generator(device="cpu" if device.type == "xla" else device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    if device.type == "cpu":  # every step streams all weights: 2 MiB pages spare the TLB (huge_pages.py)
        move_to_huge_pages(model)
    # torch-xla cannot take views of inference tensors
    with torch.no_grad() if device.type == "xla" else torch.inference_mode():
        cache = _init_cache(model, input_ids, attention_mask, uncond if guided else None, num_images)
        return _sample(model, cache, rows, guided, top_k, top_p, temperature, condition_scale, generator,
                       noise, return_logits, progress)


def _sample(model: DalleBart, cache, rows: int, guided: bool, top_k, top_p, temperature, condition_scale,
            generator, noise, return_logits: bool, progress):
    cfg, device = model.config, cache.self_k.device
    static = device.type == "xla"  # every step the same shapes, and no step length read on the host
    temperature = torch.tensor(float(temperature), device=device)
    scale = torch.tensor(float(condition_scale), device=device)
    tokens = torch.full((2 * rows if guided else rows,), cfg.decoder_start_token_id, dtype=torch.long,
                        device=device)
    codes = torch.empty((rows, cfg.image_length), dtype=torch.long, device=device)
    all_logits = torch.empty((rows, cfg.image_length, cfg.image_rows), device=device) if return_logits else None
    not_a_code = torch.arange(cfg.image_rows, device=device) >= cfg.codebook_size
    noise_buffer = torch.empty((rows, cfg.image_rows), device=device)
    position = torch.zeros(1, dtype=torch.long, device=device)
    _cut_graph(device)

    steps = tqdm(range(cfg.image_length), disable=None if progress is None else not progress,
                 desc="sampling codes", leave=False)
    for t in steps:
        h = model.decoder.step(tokens, position, cache, length=None if static else t + 1)
        if guided:  # uncond + scale * (cond - uncond) of the logits, taken before the affine lm_head
            cond, uncond_h = h[:rows].float(), h[rows:].float()
            h = (uncond_h + scale * (cond - uncond_h)).to(h.dtype)
        logits = model.decoder.lm_head(h).float()
        if return_logits:
            all_logits.index_copy_(1, position, logits[:, None])
        logits = apply_warpers(logits.masked_fill(not_a_code, float("-inf")), temperature, top_k, top_p)
        g = noise[t].to(device) if noise is not None else gumbel_noise(logits.shape, generator, device,
                                                                         out=noise_buffer)
        nxt = torch.argmax(logits + g, dim=-1)
        codes.index_copy_(1, position, nxt[:, None])  # indexed by the step tensor: one graph for all steps
        tokens.view(-1, rows).copy_(nxt)  # the unconditional rows mirror the conditional ones
        position += 1
        _cut_graph(device)
    return (codes, all_logits) if return_logits else codes
