"""`precision=bf16-mixed` on XLA devices: float32 weights, gradients and optimizer state, bf16 compute.

That is what the reference's `--dtype bfloat16` means (Flax's `dtype` is the computation dtype; `param_dtype`
stays float32), and what `bf16-mixed` means on GPUs. Lightning's XLA precision knows only `*-true`: its
`bf16-true` sets XLA_USE_BF16, and torch-xla then stores every float32 tensor as bf16 on the device, so an
update below about 1/256 of a weight rounds away (Adafactor's late, decayed steps are such updates).
Here forward and loss run under `torch.autocast("xla", dtype=torch.bfloat16)`, torch-xla's documented mixed
precision: matmuls in bf16, softmax, norms and losses in float32 by autocast's own policy. `bf16-true` stays
available by name (`trainer.precision=bf16-true`) for whoever needs its memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Generator

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.precision import XLAPrecision

XLA_ACCELERATORS = ("tpu", "xla")


class XLABf16Mixed(XLAPrecision):
    """Lightning's XLA precision at 32-true (its optimizer step: gradients all-reduced, then one graph cut),
    with forward and loss under bf16 autocast."""

    def __init__(self) -> None:
        super().__init__("32-true")
        self.precision = "bf16-mixed"  # what `trainer.precision` and the logs report

    @contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        with torch.autocast("xla", dtype=torch.bfloat16):
            yield


def instantiate_trainer(trainer_cfg: DictConfig, **kwargs: Any):
    """The `trainer=` group as a Trainer; on an XLA accelerator `precision=bf16-mixed` becomes the plugin
    above, because Lightning refuses that name there."""
    if (str(trainer_cfg.get("accelerator")) in XLA_ACCELERATORS
            and str(trainer_cfg.get("precision")) == "bf16-mixed"):
        plugins = instantiate(OmegaConf.to_container(trainer_cfg.get("plugins") or [], resolve=True)) or []
        kwargs.update(precision=None, plugins=[*plugins, XLABf16Mixed()])
    return instantiate(trainer_cfg, **kwargs)
