"""VQGAN on disk and on the Hugging Face hub: save, load (strictly) and push, as hub.py does for DalleBart.

Three layouts load, from a local directory or a hub repo:

* ours: `config.json` (our `VQGANConfig`) + `model.safetensors`;
* vqgan-jax (patil-suraj/vqgan-jax; `dalle-mini/vqgan_imagenet_f16_16384`): `config.json` (its HF
  `VQGANConfig`) + `flax_model.msgpack`, read without jax or flax;
* taming-transformers: `model.yaml` + `last.ckpt` (or the heidelberg zip's `configs/` + `ckpts/`), tensors only.

The last two are converted on load; from the hub the result is cached in our layout, keyed by repo and commit.

pixel_range: a vqgan-jax checkpoint records none. dalle-mini's port is the one such checkpoint in use, and the
reference feeds it [0, 1] images and clips its output to [0, 1] with no rescale (§3 of the reference notes),
so Flax checkpoints load as "zero_to_one". taming's releases were trained on [-1, 1]. Pass
`pixel_range=` to override either.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch
import yaml
from safetensors.torch import save_file

from .convert_flax import load_config_json, read_flax_msgpack, vqgan_state_dict
from .hub import (CONFIG_NAME, FLAX_WEIGHTS_NAME, PICKLED_NAMES, WEIGHTS_NAME, build_model,
                  converted_cache_dir, hub_file, read_checkpoint, read_safetensors, refuse_pickles,
                  snapshot_commit, upload_saved, write_converted)
from .vqgan import VQGAN, VQGANConfig, taming_state_dict

# (config, weights) pairs of taming's layout: flat, as on the hub, or as the heidelberg release unzips
TAMING_LAYOUTS = (("model.yaml", "last.ckpt"), ("configs/model.yaml", "ckpts/last.ckpt"))
_SAVED_KEYS = ("architectures", "library_name")  # written by save_pretrained for the hub, not config fields
# vqgan-jax options our VQGAN has no counterpart for, and the only value it supports
_FLAX_FIXED = {"double_z": False, "resamp_with_conv": True, "give_pre_end": False}
_PICKLE_FIX = ("A taming checkpoint loads (tensors only) as model.yaml + last.ckpt side by side; "
               "otherwise convert it once with VQGAN.from_taming_checkpoint(...).save_pretrained(dir).")

CARD = """---
library_name: dalle_mini_pt
license: mit
tags:
- vqgan
- dalle-mini
- pytorch
---

# {name}

A VQGAN ({params:.1f} M parameters) for [dalle_mini_pt](https://github.com/borisdayma/dalle-mini): it maps
{res}x{res} images to a {grid}x{grid} grid of codes from a {n_embed}-entry codebook and back. Pixels are
{pixel_range}.

```python
from dalle_mini_pt.vqgan import VQGAN

vqgan = VQGAN.from_pretrained("{name}")
images = vqgan.decode(codes, output="uint8")  # codes: (B, {codes}) long -> (B, 3, {res}, {res}) uint8
```
"""


# --- saving ------------------------------------------------------------------------------------------------

def save_pretrained(model: VQGAN, directory, *, repo_id: Optional[str] = None) -> Path:
    """Write config.json, model.safetensors (float32: the VQGAN only runs in float32) and a model card
    unless one is already there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": ["VQGAN"], "library_name": "dalle_mini_pt"}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    card = directory / "README.md"
    if not card.exists():
        c = model.config
        card.write_text(CARD.format(
            name=repo_id or directory.name, params=sum(p.numel() for p in model.parameters()) / 1e6,
            res=c.resolution, grid=c.grid_size, n_embed=c.n_embed, codes=c.codes_per_image,
            pixel_range="[0, 1]" if c.pixel_range == "zero_to_one" else "[-1, 1] inside (uint8/[0, 1] outside)"))
    return directory


def push_to_hub(model: VQGAN, repo_id: str, *, private: Optional[bool] = None, token=None,
                branch: Optional[str] = None, commit_message: str = "Upload VQGAN", create_pr: bool = False,
                endpoint: Optional[str] = None):
    """save_pretrained into a temporary directory and upload it as one commit; returns the CommitInfo."""
    return upload_saved(lambda tmp: save_pretrained(model, tmp, repo_id=repo_id), repo_id, private=private,
                        token=token, branch=branch, commit_message=commit_message, create_pr=create_pr,
                        endpoint=endpoint)


# --- loading -----------------------------------------------------------------------------------------------

def load_pretrained(name_or_path, *, revision: Optional[str] = None, local_files_only: bool = False,
                    device=None, cache_dir=None, token=None, endpoint: Optional[str] = None,
                    pixel_range: Optional[str] = None) -> VQGAN:
    """A float32 VQGAN in eval mode from a local directory or a hub repo in any of the three layouts."""
    config, state, source = read_checkpoint(
        name_or_path, f"{CONFIG_NAME} + {WEIGHTS_NAME} (or + {FLAX_WEIGHTS_NAME}, or a taming model.yaml + "
        "last.ckpt)", "dalle-mini/vqgan_imagenet_f16_16384", _load_local, _load_hub, revision=revision,
        local_files_only=local_files_only, cache_dir=cache_dir, token=token, endpoint=endpoint)
    if pixel_range is not None:
        config = dataclasses.replace(config, pixel_range=pixel_range)
    return build_model(config, state, source, dtype=torch.float32, device=device, model_class=VQGAN)


def _load_local(directory: Path):
    if (directory / WEIGHTS_NAME).exists():
        return _read_native(directory / CONFIG_NAME, directory / WEIGHTS_NAME)
    if (directory / FLAX_WEIGHTS_NAME).exists():
        return (*_convert_flax(directory / CONFIG_NAME, directory / FLAX_WEIGHTS_NAME),
                str(directory / FLAX_WEIGHTS_NAME))
    for yaml_name, ckpt_name in TAMING_LAYOUTS:
        if (directory / yaml_name).exists() and (directory / ckpt_name).exists():
            return (*_convert_taming(directory / yaml_name, directory / ckpt_name), str(directory / ckpt_name))
    refuse_pickles([p.name for p in directory.iterdir()], str(directory), _PICKLE_FIX)
    raise FileNotFoundError(f"{directory}: no VQGAN weights; expected {CONFIG_NAME} + {WEIGHTS_NAME}, "
                            f"{CONFIG_NAME} + {FLAX_WEIGHTS_NAME}, or a taming model.yaml + last.ckpt")


def _load_hub(repo_id: str, hub: dict):
    config_path = hub_file(repo_id, CONFIG_NAME, hub)
    if config_path is not None:
        weights = hub_file(repo_id, WEIGHTS_NAME, hub)
        if weights is not None:
            return _read_native(config_path, weights)
        found = _convert_cached(repo_id, hub, config_path, CONFIG_NAME, FLAX_WEIGHTS_NAME, _convert_flax)
        if found:
            return found
    for yaml_name, ckpt_name in TAMING_LAYOUTS:
        yaml_path = hub_file(repo_id, yaml_name, hub)
        found = yaml_path and _convert_cached(repo_id, hub, yaml_path, yaml_name, ckpt_name, _convert_taming)
        if found:
            return found
    refuse_pickles([n for n in PICKLED_NAMES if hub_file(repo_id, n, hub) is not None], repo_id, _PICKLE_FIX)
    raise FileNotFoundError(f"{repo_id}: the repository holds no VQGAN weights ({WEIGHTS_NAME} or "
                            f"{FLAX_WEIGHTS_NAME} with {CONFIG_NAME}, or a taming model.yaml + last.ckpt); "
                            "offline or with local_files_only, none of them is in the local cache")


def _convert_cached(repo_id: str, hub: dict, config_path: Path, config_name: str, weights_name: str, convert):
    """The cached conversion of this commit, else fetch `weights_name`, convert and cache; None if absent."""
    # keyed by commit, so a moving branch never serves a stale conversion
    cache = converted_cache_dir(repo_id, snapshot_commit(config_path, config_name), hub["cache_dir"])
    if (cache / WEIGHTS_NAME).exists():
        return _read_native(cache / CONFIG_NAME, cache / WEIGHTS_NAME)
    weights = hub_file(repo_id, weights_name, hub)
    if weights is None:
        return None
    config, state = convert(config_path, weights)
    write_converted(cache, config, state)
    return config, state, str(weights)


def _read_native(config_path: Path, weights_path: Path):
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing; {weights_path.name} needs the {CONFIG_NAME} that "
                                "VQGAN.save_pretrained writes next to it")
    values = load_config_json(config_path)
    try:
        config = VQGANConfig.from_dict({k: v for k, v in values.items() if k not in _SAVED_KEYS})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: {err}") from err
    return config, read_safetensors(weights_path), str(weights_path)


def vqgan_jax_config(values: dict, source) -> VQGANConfig:
    """Our config from vqgan-jax's config.json. It is an HF PretrainedConfig, so beside the network's fields
    it holds generic ones (architectures, transformers_version, …) that do not shape the network: the
    network's fields must all be there, the rest is not read."""
    wanted = [f.name for f in dataclasses.fields(VQGANConfig) if f.name not in ("dropout", "pixel_range")]
    missing = [k for k in wanted if k not in values]
    if missing:
        raise ValueError(f"{source}: not a vqgan-jax VQGAN config; it lacks {missing}")
    for key, supported in _FLAX_FIXED.items():
        if values.get(key, supported) != supported:
            raise ValueError(f"{source}: {key}={values[key]!r} is not supported; dalle_mini_pt's VQGAN is "
                             f"taming's VQModel, i.e. {key}={supported}")
    try:
        return VQGANConfig(**{k: values[k] for k in wanted}, dropout=values.get("dropout", 0.0),
                           pixel_range="zero_to_one")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def _convert_flax(config_path: Path, msgpack_path: Path):
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing; {msgpack_path.name} needs vqgan-jax's {CONFIG_NAME}")
    config = vqgan_jax_config(load_config_json(config_path), config_path)
    return config, vqgan_state_dict(read_flax_msgpack(msgpack_path), str(msgpack_path))


def _convert_taming(yaml_path: Path, ckpt_path: Path):
    """taming's model.yaml holds the network under `model.params` (ddconfig, n_embed, embed_dim)."""
    try:
        params = yaml.safe_load(Path(yaml_path).read_text())["model"]["params"]
        config = VQGANConfig.from_dict(params)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{yaml_path}: not a taming VQGAN model.yaml ({type(err).__name__}: {err})") from err
    return config, taming_state_dict(ckpt_path)
