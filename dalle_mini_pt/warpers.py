"""The sampler's draws: the logits warpers (temperature, top-k, top-p, min-p) and the Gumbel noise, from one
generator or one per block of rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from .generation_config import GenerationConfig


def apply_warpers(logits: torch.Tensor, config: GenerationConfig, temperature=None) -> torch.Tensor:
    """`config`'s temperature, top-k, top-p on (rows, vocab) float logits, in that order (HF Flax warpers),
    then min-p (not in the reference: HF's `MinPLogitsWarper`, which keeps codes of at least min_p times the
    best code's probability). `temperature` (a tensor) replaces `config.temperature`: the sampler's loop
    keeps it in a tensor, so that a captured CUDA graph reads each call's. An option read here as a Python
    value shapes a captured graph, and its field says so (`GenerationConfig`'s `graph=True`)."""
    top_k, top_p, min_p = config.top_k, config.top_p, config.min_p
    temperature = config.temperature if temperature is None else temperature
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


def seeded_generator(seed: Optional[int], device) -> torch.Generator:
    """The generator `generate` draws from for `seed` (a fresh random one for None); on torch-xla a CPU one,
    since XLA has no `torch.Generator`."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu" if device.type == "xla" else device)
    return generator.manual_seed(seed if seed is not None else torch.seed())


def generator_blocks(generator, rows: int) -> list:
    """One generator, or (generator, rows) pairs, each drawing its own block of rows, so the draws of a block
    do not depend on what it is batched with (the demo server merges requests, each with its own seed, into
    one call)."""
    blocks = [(generator, rows)] if isinstance(generator, torch.Generator) else list(generator)
    if sum(n for _, n in blocks) != rows:
        raise ValueError(f"the (generator, rows) pairs cover {sum(n for _, n in blocks)} rows; the "
                         f"batch has {rows} (prompts x num_images)")
    return blocks


class GumbelDraws:
    """Gumbel noise for one step of all rows, block by block, into `buffer` (rows, image_rows)."""

    def __init__(self, blocks: list, buffer: torch.Tensor):
        self.blocks, self.buffer = blocks, buffer

    def __call__(self) -> torch.Tensor:
        device = self.buffer.device
        if len(self.blocks) == 1:
            return gumbel_noise(self.buffer.shape, self.blocks[0][0], device, out=self.buffer)
        return torch.cat([gumbel_noise((n, self.buffer.shape[1]), g, device) for g, n in self.blocks])
