"""GPU memory that generation needs, computed from the model configs, not measured: the weights in each
dtype and the cache the sampler allocates per image (self-attention K/V of all 256 positions, for the
conditional and the unconditional row of a super-conditioned image, and the text's cross-attention K/V).

    python benchmarks/generation_memory.py      # the README's computed table

The measured table (`bench.py --device cuda`, `bench_report.readme_gpu_table`) adds what this leaves out:
activations, logits and workspaces (the peak of `torch.cuda.max_memory_allocated`); neither counts the CUDA
context, a few hundred MB more per process.
"""

from __future__ import annotations

import torch
from bench_report import README_BATCHES, README_DTYPES, README_SIZES
from bench_workloads import DTYPES, default_dtype, model_config, size_overrides

GB = 1e9


def memory_figures(size: str, dtype: str, images: int) -> dict:
    """Bytes of the weights and of the sampling cache for `images` super-conditioned images of one prompt,
    from the model and cache the package builds (on the meta device: no memory)."""
    from dalle_mini_pt.model import DalleBart

    config = model_config(**size_overrides(size))
    with torch.device("meta"), default_dtype(DTYPES[dtype]):
        model = DalleBart(config)
        # the prompt and the unconditional prompt, at the full text length (what a CUDA graph keeps)
        states = torch.empty(2, config.max_text_length, config.d_model)
        mask = torch.ones(2, config.max_text_length, dtype=torch.long)
        cache = model.decoder.init_cache(states, mask, rows_per_state=images)
    tensors = (cache.self_k, cache.self_v, *cache.cross_k, *cache.cross_v)
    return {"weights": sum(p.numel() * p.element_size() for p in model.parameters()),
            "cache": sum(t.numel() * t.element_size() for t in tensors)}


def markdown() -> str:
    batches = " / ".join(map(str, README_BATCHES))
    lines = [f"| model | dtype | weights, GB | cache for 1 image, MB | weights + cache at {batches} images, "
             "GB |", "|---|---|---|---|---|"]
    for size in README_SIZES:
        for dtype in README_DTYPES:
            one = memory_figures(size, dtype, 1)
            total = [memory_figures(size, dtype, n) for n in README_BATCHES]
            lines.append(f"| {size} | {dtype} | {one['weights'] / GB:.2f} | {one['cache'] / 1e6:.0f} | "
                         + " / ".join(f"{(t['weights'] + t['cache']) / GB:.2f}" for t in total) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
