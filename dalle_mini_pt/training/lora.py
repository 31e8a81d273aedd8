"""Parameter-efficient fine-tuning: peft's LoRA adapters on DalleBart's projections, and their merge into
plain weights for export.

The default targets are every attention projection (q, k, v, out of the encoder's self-attention and of the
decoder's self- and cross-attention) and the GLU's three matrices: the cross-attention is where a caption
steers the image codes and the GLU holds most of the weights, so a new subject or style reaches both. Rank 8
with alpha 16 (scaling 2) adds 4.5 M parameters to dalle-mini's 440 M (1%; benchmarks/training_memory.py
computes it); on the small data sets people fine-tune on, a low rank over-fits less than a full fine-tune,
and gradients and optimizer state shrink to the adapters'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraModel
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc0", "fc1", "fc2")


@dataclass
class LoraSettings:
    """`model.lora` in the configs."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(TARGETS))

    def __post_init__(self) -> None:
        # plain values whatever came in (Hydra's ListConfig): they are saved in checkpoints
        self.r, self.alpha, self.dropout = int(self.r), int(self.alpha), float(self.dropout)
        self.targets = [str(t) for t in self.targets]

    def peft_config(self) -> LoraConfig:
        if self.r < 1:
            raise ValueError(f"model.lora.r={self.r} must be >= 1 (the adapters' rank)")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"model.lora.targets {unknown} are not DalleBart projections; use some of "
                             f"{TARGETS}")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets))

    def to_dict(self) -> dict:
        return asdict(self)


def add_adapters(net: nn.Module, settings: LoraSettings) -> nn.Module:
    """LoRA layers injected in place (the model keeps its class); only their weights stay trainable."""
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
