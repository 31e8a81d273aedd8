"""Parameter-efficient fine-tuning: peft's LoRA adapters on DalleBart's projections, and their merge into
plain weights for export.

The default targets are every attention projection (q, k, v, out of the encoder's self-attention and of the
decoder's self- and cross-attention) and the GLU's three matrices (of those the network has: a 2021 model's
plain feed-forward has no fc0): the cross-attention is where a caption
steers the image codes and the GLU holds most of the weights, so a new subject or style reaches both. Rank 8
with alpha 16 (scaling 2) adds 4.5 M parameters to dalle-mini's 440 M (1%; benchmarks/training_memory.py
computes it); on the small data sets people fine-tune on, a low rank over-fits less than a full fine-tune,
and gradients and optimizer state shrink to the adapters'.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraModel
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc0", "fc1", "fc2")


def whole_number(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"model.lora.{key}={value!r} is not a whole number")
    return int(value)


@dataclass
class LoraSettings:
    """`model.lora` in the configs, refused when the adapters could not learn (before any step)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: Optional[list[str]] = None  # None: every projection of TARGETS the network has

    def __post_init__(self) -> None:
        # plain values whatever came in (Hydra's ListConfig): they are saved in checkpoints
        self.r = whole_number("r", self.r)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"model.lora.alpha={self.alpha!r} is not a number (e.g. alpha: 16, twice r)")
        self.alpha = int(self.alpha) if float(self.alpha).is_integer() else float(self.alpha)
        self.dropout = float(self.dropout)
        self.targets = None if self.targets is None else [str(t) for t in self.targets]
        self.check()

    def check(self) -> None:
        if self.r < 1:
            raise ValueError(f"model.lora.r={self.r}: the adapters' rank must be >= 1 (rank {self.r} leaves "
                             "them no weights to train); e.g. r: 8")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"model.lora.alpha={self.alpha}: the adapters' output is scaled by alpha/r, so "
                             + ("0 gives them no gradient and they never change" if self.alpha == 0 else
                                "a negative or non-finite scale trains them upside down or to NaN")
                             + f"; use alpha > 0, e.g. alpha: {2 * self.r} (twice r)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout={self.dropout} must be in [0, 1): at 1 every adapter input "
                             "is dropped and nothing learns")
        if self.targets is None:
            return
        if not self.targets:
            raise ValueError(f"model.lora.targets is empty: no projection would get an adapter; use some of "
                             f"{TARGETS}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"model.lora.targets {unknown} are not DalleBart projections; use some of "
                             f"{TARGETS}")

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets))

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_targets(net: nn.Module, targets: Optional[list[str]]) -> list[str]:
    """The projections to adapt: each given target must name linear layers of this network (peft adapts
    the modules whose name ends with it and passes over a target that matches none: `fc0` exists only in
    GLU feed-forwards); none given, every projection of TARGETS it has."""
    names = {name.rsplit(".", 1)[-1] for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    present = [t for t in TARGETS if t in names]
    if targets is None:
        return present
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"model.lora.targets {missing} match no layer of this model (its projections are "
                         f"{present}; fc0 exists only with use_glu): those adapters would not exist. Drop "
                         "them from model.lora.targets")
    return targets


def add_adapters(net: nn.Module, settings: LoraSettings) -> nn.Module:
    """LoRA layers injected in place (the model keeps its class); only their weights stay trainable."""
    settings.targets = resolve_targets(net, settings.targets)
    inject_adapter_in_model(settings.peft_config(), net)
    for name, p in net.named_parameters():
        p.requires_grad = "lora_" in name
    return net


def merged(net: nn.Module, settings: LoraSettings, state: dict) -> nn.Module:
    """`net` (a fresh model of the adapted one's architecture) with the adapted `state` loaded and the
    adapters merged into its plain weights by peft: what `export` saves."""
    tuner = LoraModel(net, settings.peft_config(), "default")
    tuner.model.load_state_dict(state, strict=True)
    return tuner.merge_and_unload()
