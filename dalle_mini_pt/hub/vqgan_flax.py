"""vqgan-jax's VQGAN (patil-suraj/vqgan-jax; `dalle-mini/vqgan_imagenet_f16_16384`) as our config and tensors.

Its config.json is an HF PretrainedConfig: beside the network's fields it holds generic ones (architectures,
transformers_version, …) that do not shape the network, so only the network's fields are read, and all of
them must be there. It records no pixel range: dalle-mini's port is the one such VQGAN in use, and the
reference feeds it [0, 1] images and clips its output to [0, 1] with no rescale, so it loads as
"zero_to_one" (`pixel_range=` overrides it).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .files import CONFIG_NAME, FLAX_WEIGHTS_NAME, load_config_json
from .flax_msgpack import PARAM, read_flax_msgpack
from .mixin import Layout

NETWORK_FIELDS = ("n_embed", "embed_dim", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution",
                  "z_channels", "in_channels", "out_ch")
# vqgan-jax options our VQGAN has no counterpart for, and the only value it supports
_FIXED = {"double_z": False, "resamp_with_conv": True, "give_pre_end": False}

# vqgan-jax builds its levels and blocks in `setup()` as Python lists, which Flax names `down_0`, `block_1`;
# taming keeps them in ModuleLists (`down.0`, `block.1`). `mid/block_1` and `mid/attn_1` are plain attribute
# names in both, so only list items (a level, or a block/attn inside a level) are renamed.
_LEVEL = re.compile(r"(down|up)_\d+")
_ITEM = re.compile(r"(block|attn)_\d+")


def vqgan_jax_config(values: dict, source) -> dict:
    missing = [k for k in NETWORK_FIELDS if k not in values]
    if missing:
        raise ValueError(f"{source}: not a vqgan-jax VQGAN config; it lacks {missing}")
    for key, supported in _FIXED.items():
        if values.get(key, supported) != supported:
            raise ValueError(f"{source}: {key}={values[key]!r} is not supported; dalle_mini_pt's VQGAN is "
                             f"taming's VQModel, i.e. {key}={supported}")
    return {**{k: values[k] for k in NETWORK_FIELDS}, "dropout": values.get("dropout", 0.0),
            "pixel_range": "zero_to_one"}


def _key(key: str) -> str:
    *modules, leaf = key.split("/")
    out = []
    for i, part in enumerate(modules):
        in_level = i > 0 and _LEVEL.fullmatch(modules[i - 1])
        if _LEVEL.fullmatch(part) or (in_level and _ITEM.fullmatch(part)):
            part = part.replace("_", ".")
        out.append(part)
    return ".".join(out + [PARAM[leaf]])


def vqgan_state_dict(flat: dict[str, torch.Tensor], source: str) -> dict:
    """taming's state dict from a flat vqgan-jax tree (`encoder/down_0/block_0/conv1/kernel`, …); conv kernels
    are HWIO and become OIHW."""
    out = {}
    for key, value in flat.items():
        try:
            ours = _key(key)
        except KeyError as err:
            raise ValueError(f"{source}: parameter {key!r} (shape {tuple(value.shape)}) is not a vqgan-jax "
                             f"VQGAN parameter (no leaf {err}); are these VQGAN weights?") from err
        if key.endswith("/kernel") and value.dim() == 4:
            value = value.permute(3, 2, 0, 1).contiguous()
        elif key.endswith(("/scale", "/bias")) and value.dim() == 4:
            # vqgan-jax's own torch->flax converter writes GroupNorm params as [1, 1, 1, C] (the shape older
            # flax GroupNorm used); taming wants [C]
            value = value.reshape(-1)
        out[ours] = value
    return out


def read_vqgan_flax(config_path: Path, msgpack_path: Path) -> tuple[dict, dict]:
    config = vqgan_jax_config(load_config_json(config_path), config_path)
    return config, vqgan_state_dict(read_flax_msgpack(msgpack_path), str(msgpack_path))


VQGAN_FLAX = Layout(f"{CONFIG_NAME} + {FLAX_WEIGHTS_NAME} (vqgan-jax)", CONFIG_NAME, FLAX_WEIGHTS_NAME,
                    read_vqgan_flax)
