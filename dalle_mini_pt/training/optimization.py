"""What the optimizer steps: parameter groups (decay on matrices only), and the learning-rate schedules of the
reference recipe (linear warmup, then constant or a decay), as `configure_optimizers` output."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DECAYS = ("constant", "linear", "cosine", "exponential")


def param_groups(model: nn.Module) -> list[dict]:
    """Decay matrices only: biases, LayerNorms and head scales are excluded, as in the reference's AdamW.
    The first group takes the optimizer's own weight_decay (from `conf/optimizer`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "head_scale" not in name else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, decay: str = "constant",
              decay_rate: float = 0.5, transition_steps: int = 1000, staircase: bool = False) -> float:
    """Multiplier of the peak learning rate at optimizer step `step`."""
    if warmup_steps and step <= warmup_steps:
        # as the reference (optax linear_schedule over warmup_steps + 1 steps): 0 at step 0, peak after
        return step / (warmup_steps + 1)
    done = step - warmup_steps - (1 if warmup_steps else 0)
    if decay == "constant":
        return 1.0
    if decay == "exponential":
        exponent = done // transition_steps if staircase else done / transition_steps
        return decay_rate ** exponent
    progress = min(1.0, done / max(1, total_steps - warmup_steps - (1 if warmup_steps else 0)))
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def warmup_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, decay: str = "constant",
                    decay_rate: float = 0.5, transition_steps: int = 1000,
                    staircase: bool = False) -> LambdaLR:
    if decay not in DECAYS:
        raise ValueError(f"scheduler.decay={decay!r} is unknown; use one of {DECAYS}")
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
    if decay in ("linear", "cosine") and (total_steps is None or total_steps == float("inf")):
        raise ValueError(f"scheduler.decay={decay!r} needs a known run length: set trainer.max_steps")
    if decay == "exponential" and transition_steps <= 0:
        raise ValueError("scheduler.transition_steps must be > 0 for exponential decay")
    known = decay in ("linear", "cosine")
    kwargs = dict(warmup_steps=warmup_steps, total_steps=int(total_steps) if known else 0,
                  decay=decay, decay_rate=decay_rate, transition_steps=transition_steps, staircase=staircase)
    return LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))


def lightning_optimizers(module, params, optimizer_factory, scheduler_factory=None):
    """`configure_optimizers` output for every LightningModule here: the Hydra optimizer partial over
    `params`, and the schedule partial (if any) stepped per optimizer step over the run's length."""
    optimizer = optimizer_factory(params=params)
    if scheduler_factory is None:
        return optimizer
    scheduler = scheduler_factory(optimizer=optimizer, total_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
