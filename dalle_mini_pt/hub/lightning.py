"""Our Lightning training checkpoints (`.ckpt`) as a DalleBart config and tensors.

The LightningModule keeps the DalleBart as `net` and writes its config under `CONFIG_KEY`, so a checkpoint
alone rebuilds the network. It loads with `weights_only=True`: our checkpoints hold only tensors, numbers,
strings and plain containers, so nothing is unpickled beyond those. Tensors written on a TPU or GPU are
mapped to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

PREFIX = "net."
CONFIG_KEY = "dallebart_config"
LORA_KEY = "lora"  # the LoRA settings of a run that trained adapters


def load_lightning_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, tensors and plain data only, checked to be one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises several types for corrupt or foreign files)
        raise ValueError(f"{path}: not a loadable Lightning checkpoint of tensors only ({err})") from err
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: no '{CONFIG_KEY}'/'state_dict' entries; it was not written by "
                         "dalle_mini_pt's DalleBartModule")
    return ckpt


def network_state(ckpt: dict) -> dict:
    """The DalleBart's tensors of a checkpoint, under the network's own names."""
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    # torch.compile wraps modules as `_orig_mod`; compile happens in place here, but be safe for old runs
    return {k.replace("._orig_mod", "").replace("_orig_mod.", ""): v for k, v in state.items()}


def network_config(ckpt: dict) -> dict:
    return {**ckpt[CONFIG_KEY], "gradient_checkpointing": False}  # a training setting, not the model's


def read_lightning_checkpoint(path: Path) -> tuple[dict, dict]:
    ckpt = load_lightning_checkpoint(path)
    if LORA_KEY in ckpt:
        raise ValueError(f"{path} holds LoRA adapters beside the weights they adapt: merge them into a model "
                         f"directory with `python -m dalle_mini_pt.export {path} OUT_DIR`, then load that")
    return network_config(ckpt), network_state(ckpt)
