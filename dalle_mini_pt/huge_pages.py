"""Weights on transparent huge pages (Linux), for decoding speed on the CPU.

A decoding step streams every weight once, a few rows at a time, so it runs at memory bandwidth; with 4 KiB
pages the 772 MB of a mini step cross 190k pages and the TLB misses show (docs/cpu_decoding.md: what 2 MiB
pages save, and the command that measures it). PyTorch advises huge pages only under
`THP_MEM_ALLOC_ENABLE=1`, read before its first allocation, which is too early for a library. So weights
are moved instead, as a step of loading (`pipeline.load_model`, where every pipeline load path takes its
model, and the benchmark call `move_to_huge_pages`; sampling never moves what it is given): each layer
weight is copied into a fresh private mapping advised `MADV_HUGEPAGE`, whose first touch (the copy) faults
it in as 2 MiB pages. The tensor covers exactly its bytes of the mapping (a saved state dict is no bigger),
and the mapping is unmapped with the tensor's storage. One parameter at a time, so memory never holds two
models. Nothing moves where the kernel has huge pages off ("never") or off Linux.
"""

from __future__ import annotations

import mmap
import sys
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import nn

HUGE_PAGE = 2 << 20
# A move copies before it frees, so peak memory grows by the biggest tensor moved. The layer weights a step
# streams are at most 11 MB (mini) or 34 MB (mega); the embeddings (read a row at a time) and the lm_head
# (67 MB, 9% of a mini step's bytes) stay, so the peak grows by a layer weight, not by 67 MB.
MAX_MOVE = 48 << 20


@lru_cache(maxsize=None)
def huge_pages_available() -> bool:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return (sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE") and thp.exists()
            and "[never]" not in thp.read_text())


def huge_page_copy(tensor: torch.Tensor) -> Optional[torch.Tensor]:
    """A contiguous copy of a CPU tensor of 2 MiB or more on huge pages, or None where there are none."""
    if not huge_pages_available() or tensor.device.type != "cpu" or tensor.nbytes < HUGE_PAGE:
        return None
    # slack of one huge page, so the data can start on a 2 MiB boundary (mmap only aligns to 4 KiB)
    mapping = mmap.mmap(-1, tensor.nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -torch.frombuffer(mapping, dtype=torch.uint8).data_ptr() % HUGE_PAGE
    mapping.madvise(mmap.MADV_HUGEPAGE, start, tensor.nbytes // HUGE_PAGE * HUGE_PAGE)
    out = torch.frombuffer(mapping, dtype=tensor.dtype, count=tensor.numel(), offset=start)
    return out.view(tensor.shape).copy_(tensor)


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor copied onto huge pages where it can be, else the tensor itself."""
    copy = huge_page_copy(tensor)
    return tensor if copy is None else copy


def move_to_huge_pages(module: nn.Module, max_bytes: int = MAX_MOVE) -> int:
    """Move the module's CPU parameters of 2 MiB to `max_bytes` onto huge pages; returns the bytes moved. A
    parameter that starts on a 2 MiB boundary is taken as placed (by an earlier call, or by PyTorch's own
    allocator under THP_MEM_ALLOC_ENABLE=1, which aligns so; ordinary allocations never are), so a second
    call moves nothing, and the module carries no mark of it. Parameters that are views into a bigger
    buffer (FSDP's flat parameters) stay where their owner keeps them."""
    moved = 0
    with torch.no_grad():
        for param in module.parameters():
            if (param.device.type != "cpu" or param.data_ptr() % HUGE_PAGE == 0 or not param.is_contiguous()
                    or param.nbytes > max_bytes or param.untyped_storage().nbytes() != param.nbytes):
                continue
            copy = huge_page_copy(param.data)
            if copy is not None:
                param.data = copy
                moved += copy.nbytes
    return moved
