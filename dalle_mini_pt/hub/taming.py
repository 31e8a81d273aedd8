"""taming-transformers' VQGAN checkpoints: `model.yaml` + `last.ckpt`, read as tensors only.

Two layouts: flat (as on the hub) or as the heidelberg release unzips (`configs/` + `ckpts/`); and the
`.ckpt` file alone (`read_taming_file`), which records no config. A taming `.ckpt` is a Lightning 1.x
pickle; it is loaded with `weights_only=True`, and the Python objects it also pickles (callback classes)
are replaced by an inert stand-in, so loading never runs code from the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import yaml

from .mixin import Layout

_CONVERT = (
    "  python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('{path}', map_location='cpu', weights_only=False)['state_dict']; "
    "save_file({{k: v.contiguous() for k, v in sd.items() if not k.startswith('loss.')}}, "
    "'vqgan.safetensors')\""
)


class _Inert:
    """Stands in for every non-tensor class or function a checkpoint pickles (Lightning 1.x keys callback
    states by class). It runs nothing and keeps nothing, so loading cannot execute code from the file."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _reason(err: Exception) -> str:
    """torch's weights-only errors bury their one-line cause in a page of generic advice; keep the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = [line for line in lines if line.startswith(("Trying to", "Unsupported"))]
    return f"{type(err).__name__}: {(cause or lines or [''])[0]}"


def load_weights_only(path) -> object:
    """torch.load(weights_only=True); if the file also pickles other objects (real taming checkpoints hold
    Lightning 1.x callback classes), load again with each of them replaced by `_Inert`. Never
    weights_only=False: that would run whatever the file names."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([(_Inert, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} could not be read with a weights-only load ({_reason(err)}). Where a "
            "checkpoint pickles Python objects beyond tensors, rebuilding them would run code from the file, "
            "so we do not. If you trust the file, convert it once:\n" + _CONVERT.format(path=path)
            + "\nthen load it with VQGAN.from_pretrained('vqgan.safetensors', default_config=config).",
        ) from err


def taming_state_dict(path) -> dict[str, torch.Tensor]:
    """The VQGAN tensors of a taming `.ckpt`, read without running pickled code; `loss.*` dropped."""
    obj = load_weights_only(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (neither the checkpoint nor its "
                         "'state_dict' entry maps names to tensors); is it a taming VQGAN checkpoint?")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def read_taming(yaml_path: Path, ckpt_path: Path) -> tuple[dict, dict]:
    """taming's model.yaml holds the network under `model.params` (ddconfig, n_embed, embed_dim), which
    `VQGANConfig.from_dict` reads as it is."""
    try:
        params = yaml.safe_load(Path(yaml_path).read_text())["model"]["params"]
        if not isinstance(params, dict):
            raise TypeError(f"model.params is a {type(params).__name__}")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{yaml_path}: not a taming VQGAN model.yaml ({type(err).__name__}: {err})") from err
    return params, taming_state_dict(ckpt_path)


def read_taming_file(ckpt_path: Path) -> tuple[None, dict]:
    """A taming `.ckpt` alone: its tensors; the architecture is the caller's (`default_config`)."""
    return None, taming_state_dict(ckpt_path)


TAMING_LAYOUTS = tuple(Layout(f"a taming {y} + {c}", y, c, read_taming)
                       for y, c in (("model.yaml", "last.ckpt"), ("configs/model.yaml", "ckpts/last.ckpt")))
PICKLE_FIX = ("A taming checkpoint loads (tensors only) as model.yaml + last.ckpt side by side; otherwise "
              "download it and convert it once with VQGAN.from_pretrained('last.ckpt', "
              "default_config=VQGANConfig(...)).save_pretrained(dir).")
