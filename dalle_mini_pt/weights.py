"""Strict state-dict loading with errors that say exactly what disagrees."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail listing missing, unexpected and wrongly-shaped keys (from `source`)."""
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
    module.load_state_dict(state_dict, strict=True)
