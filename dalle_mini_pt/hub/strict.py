"""Strict loading: every tensor of the module from the stored ones, or an error that lists what disagrees."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail listing missing, unexpected and wrongly-shaped keys (from `source`)."""
    check_keys(module, state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def check_keys(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {type(module).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                shown = ", ".join(items[:12]) + (f", … ({len(items)} in all)" if len(items) > 12 else "")
                lines.append(f"  {title}: {shown}")
        lines.append("  Check that the config describes the same architecture as the weights.")
        raise ValueError("\n".join(lines))


def build_strict(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str,
                 meta: bool = True) -> nn.Module:
    """`build()` loaded strictly with `state`. With `meta`, the module is built on the meta device and the
    tensors are assigned, so big models skip their random init and memory never holds two copies."""
    if not meta:
        module = build()
        load_strict(module, state, source)
        return module
    with torch.device("meta"):
        module = build()
    check_keys(module, state, source)  # names and shapes against meta stand-ins: no data copied
    module.load_state_dict(state, strict=True, assign=True)
    return module
