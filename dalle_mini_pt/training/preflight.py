"""Checks of a composed training run that no single object makes, done before any step, each naming the key
and the fix: numeric options that are not finite, trainer values of the wrong type, learning rates that train
nothing or go uphill, and the checkpoint to resume from (readable, finite, of the same architecture, not
already past the run's end)."""

from __future__ import annotations

import inspect
import math
import typing
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint

from ..hub.lightning import CONFIG_KEY, LORA_KEY
from ..model import architecture_differences
from .divergence import refuse_non_finite


def non_finite_options(values, prefix: str = "") -> list[str]:
    """`key=value` of every float in a (plain) config tree that is nan or ±inf."""
    if isinstance(values, dict):
        items = values.items()
    elif isinstance(values, list):
        items = enumerate(values)
    else:
        return [f"{prefix}={values}"] if isinstance(values, float) and not math.isfinite(values) else []
    return [bad for k, v in items for bad in non_finite_options(v, f"{prefix}.{k}" if prefix else str(k))]


def check_finite_options(cfg: DictConfig, what: str = "") -> None:
    """nan and inf parse as numbers (`optimizer.lr=nan`), and every check of a range passes them by (nan
    compares false): a run would train on nan from its first step. Interpolations are left unresolved: a
    bad value is named where it is written."""
    bad = non_finite_options(OmegaConf.to_container(cfg, resolve=False))
    if bad:
        raise ValueError(f"{what}{', '.join(bad)}: not a finite number. Every numeric option takes a finite "
                         "value (nan and inf would reach the weights as nan); give one")


def _types(annotation) -> set:
    """The plain classes a Trainer argument's annotation admits ("literal" for a Literal of values)."""
    if typing.get_origin(annotation) is typing.Literal:
        return {"literal"}
    args = typing.get_args(annotation)
    if args:
        return set().union(*(_types(a) for a in args))
    return {annotation}


def check_trainer_values(trainer_cfg: DictConfig) -> None:
    """Text where the Trainer takes only numbers (`trainer.max_steps=abc`) otherwise fails deep inside
    Lightning with a TypeError about '<' that names no key."""
    parameters = inspect.signature(pl.Trainer.__init__).parameters
    for key, value in trainer_cfg.items():
        if not isinstance(value, str) or key not in parameters:
            continue
        accepted = _types(parameters[key].annotation)
        if str not in accepted and "literal" not in accepted and accepted & {int, float, bool}:
            kinds = " or ".join(sorted(t.__name__ for t in accepted & {int, float, bool}))
            raise ValueError(f"trainer.{key}={value!r} is not a number: it takes {kinds} "
                             f"(e.g. trainer.{key}={parameters[key].default})")


def check_learning_rate(optimizer_cfg: DictConfig) -> None:
    lr = optimizer_cfg.get("lr")
    if lr is None:  # Adafactor's relative step sets its own
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"optimizer.lr={lr!r} is not a number (the 2021 recipe used optimizer.lr=0.005)")
    if lr < 0:
        raise ValueError(f"optimizer.lr={lr} is negative: every step would climb the loss (gradient ascent). "
                         "Set a positive learning rate, e.g. optimizer.lr=0.005")
    if lr == 0:
        raise ValueError("optimizer.lr=0 would leave every weight as it is while the run goes through the "
                         "motions. Set a positive learning rate, e.g. optimizer.lr=0.005")


def resolve_last(trainer: pl.Trainer) -> Optional[Path]:
    """What `ckpt_path=last` means: the newest `last*.ckpt` of the run's checkpoint directory or the
    checkpoint saved when the run was preempted, as Lightning resolves it; None when there is none yet (a
    first start)."""
    found = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath).is_dir():
            found += Path(callback.dirpath).glob(f"{callback.CHECKPOINT_NAME_LAST}*{callback.FILE_EXTENSION}")
        elif isinstance(callback, OnExceptionCheckpoint) and Path(callback.ckpt_path).is_file():
            found.append(Path(callback.ckpt_path))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _read(path: Path) -> Optional[dict]:
    """The checkpoint's contents, memory-mapped (cheap for big files); None when it cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (torch raises several types for empty, cut-off or foreign files)
        return None
    return ckpt if isinstance(ckpt, dict) else None


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents; a missing or unreadable one is named (an unreadable one with the newest
    intact one beside it)."""
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file")
    ckpt = _read(path)
    if ckpt is None:
        newest_first = sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        intact = next((p for p in newest_first if p != path and _read(p) is not None), None)
        hint = (f"the newest intact checkpoint there is {intact}: resume with ckpt_path={intact}"
                if intact else "there is no intact checkpoint beside it: start a new run")
        raise ValueError(f"ckpt_path={path}: cannot be read as a checkpoint ({path.stat().st_size} bytes: "
                         f"empty or cut off, as a kill while saving leaves it); {hint}")
    return ckpt


def check_architecture(ckpt: dict, path: Path, model) -> None:
    """The checkpoint's network and adapters are the model group's (Lightning would list raw size errors)."""
    saved, ours = ckpt.get(CONFIG_KEY), getattr(getattr(model, "config", None), "to_dict", None)
    if saved is not None and ours is not None:
        differ = architecture_differences(ours(), saved)
        if differ:
            listed = ", ".join(f"{k}: {then!r} in the checkpoint, {now!r} in the config"
                               for k, (now, then) in differ.items())
            raise ValueError(f"ckpt_path={path} holds another architecture ({listed}). Resume with the "
                             "model settings it was trained with, or start a new run from its weights")
    lora = getattr(model, "lora", None)
    if ckpt.get(LORA_KEY) != (lora.to_dict() if lora else None):
        raise ValueError(f"ckpt_path={path} was trained with model.lora={ckpt.get(LORA_KEY)}, the config has "
                         f"model.lora={lora.to_dict() if lora else None}: set the same model.lora")


def check_resume(path: Path, trainer: pl.Trainer, model) -> None:
    """A checkpoint that cannot be read, holds another architecture, or already reached `max_steps`."""
    ckpt = read_checkpoint(path)
    check_architecture(ckpt, path, model)
    refuse_non_finite(ckpt.get("state_dict", {}), f"ckpt_path={path}",
                      "Resume from an earlier checkpoint of the run, saved before it diverged.")
    step = ckpt.get("global_step", 0)
    if 0 <= trainer.max_steps <= step:
        raise ValueError(f"ckpt_path={path} is at step {step}, and trainer.max_steps={trainer.max_steps}: "
                         f"there is nothing left to train. Raise trainer.max_steps above {step} to train on")
