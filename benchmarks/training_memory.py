"""Memory that fine-tuning needs for its weights, gradients and optimizer state, computed from the exact
parameter shapes of conf/model/dalle_mini.yaml and dalle_mega.yaml (built on the meta device: no memory, no
download). Activations come on top and grow with the batch; they are not computed here.

    python benchmarks/training_memory.py          # the README's "Fine-tuning" table

Rows: a full fine-tune in bf16-mixed with Adafactor as configured (fp32 weights and gradients, factored
second moments: rows + columns per matrix, no first moment), the same with AdamW (two fp32 moments per
weight), and LoRA (rank 8, the default targets): the frozen weights in fp32, gradients and Adafactor state for
the adapters only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.training.lora import TARGETS

ROOT = Path(__file__).resolve().parent.parent

GB = 1e9
FP32 = 4


def config(name: str) -> DalleBartConfig:
    node = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    if "defaults" in node:  # dalle_mega.yaml extends dalle_mini.yaml
        node = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / "dalle_mini.yaml"), node)
    values = OmegaConf.to_container(node.net.config)
    values.pop("_target_", None)  # conf/model/dallebart_base.yaml names the class
    return DalleBartConfig(**values)


def shapes(name: str) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = DalleBart(config(name))
    return {n: p.shape for n, p in model.named_parameters()}


def adafactor_state(shape: torch.Size) -> int:
    """Floats Adafactor keeps for one parameter (factored second moment for matrices, none of the first)."""
    return shape[0] + shape[1] if len(shape) == 2 else shape.numel()


def lora_params(params: dict[str, torch.Size], rank: int = 8) -> dict[str, torch.Size]:
    """The adapters' shapes: A (rank × in) and B (out × rank) for every targeted projection."""
    out = {}
    for name, shape in params.items():
        module = name.rsplit(".", 2)[-2]
        if module in TARGETS and name.endswith("weight"):
            out[f"{name}.A"], out[f"{name}.B"] = torch.Size((rank, shape[1])), torch.Size((shape[0], rank))
    return out


def rows(name: str) -> dict[str, float]:
    params = shapes(name)
    n = sum(s.numel() for s in params.values())
    weights = n * FP32
    adapters = lora_params(params)
    a = sum(s.numel() for s in adapters.values())
    return {
        "parameters (B)": n / 1e9,
        "full, Adafactor (GB)": (2 * weights + FP32 * sum(map(adafactor_state, params.values()))) / GB,
        "full, AdamW (GB)": 4 * weights / GB,
        "LoRA r=8, Adafactor (GB)":
            (weights + 2 * a * FP32 + FP32 * sum(map(adafactor_state, adapters.values()))) / GB,
        "LoRA parameters (M)": a / 1e6,
    }


def table() -> str:
    computed = {name: rows(name) for name in ("dalle_mini", "dalle_mega")}
    columns = list(next(iter(computed.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in computed.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
