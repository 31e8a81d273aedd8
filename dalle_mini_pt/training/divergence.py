"""Training that stops being a number stops, says where and why, and leaves the last finite checkpoint alone.

`DivergenceGuard` watches every micro-batch's loss (`on_before_backward`) and every optimizer step's gradients
(`on_before_optimizer_step`, their largest magnitude: finite exactly when every element is, and it cannot
overflow as a sum of squares can) with a few scalar operations on the device, inside the step: no value goes
to the host there. The host looks at what they recorded ("a look": a copy of a few scalars):
- off XLA after every step (on the CPU the copy is free; on a GPU the default callbacks' ThroughputMonitor and
  progress bar already wait for the step to end, so the copy finds it done);
- on XLA only at the steps Lightning logs (`trainer.log_every_n_steps`), where the step's graph has run
  and the scalars are materialised: a per-step read would cut each step into two graphs;
- always before a checkpoint is written (and the weights themselves are checked then, since an update can
  overflow from a finite gradient), before validation, before the generation callback samples, and at the
  end of training (before a module saves its model).
A look that finds a non-finite value raises `TrainingDiverged` naming the first bad step, the value, the
likely cause and the checkpoint left intact; the entry point exits non-zero. Locating the operation that made
the value is autograd's anomaly detection (`trainer.detect_anomaly=true`), which costs a lot, so only on
request. With a GradScaler (`precision=16-mixed`) non-finite gradients are the scaler's business (it skips
those steps and lowers the scale): only the loss is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import pytorch_lightning as pl
import torch

NONE, LOSS, GRADIENT = 0, 1, 2


class TrainingDiverged(FloatingPointError):
    """A loss or gradient stopped being finite; the message says where, why, and what was kept."""


def listed(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f", … ({len(items)} in all)" if len(items) > limit else "")


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding inf or NaN, with how many of their values do (one
    reduction per tensor and one read of all the verdicts)."""
    floats = {k: v.detach() for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    if not floats:
        return []
    verdicts = torch.stack([torch.isfinite(v).all() for v in floats.values()]).tolist()
    bad = [k for k, ok in zip(floats, verdicts) if not ok]
    return [f"{k} ({int((~torch.isfinite(floats[k])).sum())} of {floats[k].numel()} values)" for k in bad]


def refuse_non_finite(state: Mapping[str, torch.Tensor], source: str, fix: str) -> None:
    bad = non_finite_tensors(state)
    if bad:
        raise ValueError(f"{source} holds inf/NaN weights in {len(bad)} tensors: {listed(bad)}. "
                         f"Training or evaluating them gives NaN from the first step. {fix}")


@dataclass
class Reading:
    """What a look found (host values)."""

    first_bad: int  # index of the first optimizer step with a non-finite value, -1 for none
    what: int  # LOSS or GRADIENT
    bad_value: float
    last_loss: float  # the last finite loss before it (nan when none was seen)
    first_loss: float


class DivergenceGuard(pl.Callback):
    """`look_every_n_steps`: how often the host reads the device's record (None: every step off XLA, the
    logging interval on XLA). `check_gradients`: also check every step's gradients."""

    def __init__(self, look_every_n_steps: Optional[int] = None, check_gradients: bool = True):
        if look_every_n_steps is not None and look_every_n_steps < 1:
            raise ValueError(f"callbacks.divergence.look_every_n_steps={look_every_n_steps} must be >= 1 "
                             "(or null: every step, on XLA every logged step)")
        self.look_every_n_steps, self.check_gradients = look_every_n_steps, check_gradients
        self._record: dict[str, torch.Tensor] = {}
        self.start_step, self._looked_at = 0, -1
        self.saved_step: Optional[int] = None  # the last checkpoint this run wrote, checked finite

    # --- the record, kept on the device --------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        refuse_non_finite(weights_of(pl_module), "the model at the start of training",
                          "Start from finite weights (model.init_from, ckpt_path).")
        device, start = pl_module.device, trainer.global_step
        self.start_step = start
        ints = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        floats = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        self._record = {"step": ints(start), "start": ints(start), "first_bad": ints(-1), "what": ints(NONE),
                        "bad_value": floats(0.0), "last_loss": floats(math.nan),
                        "first_loss": floats(math.nan)}

    def _mark(self, bad: torch.Tensor, what: int, value: torch.Tensor) -> None:
        r = self._record
        new = bad & (r["first_bad"] < 0)
        r["first_bad"] = torch.where(new, r["step"], r["first_bad"])
        r["what"] = torch.where(new, torch.full_like(r["what"], what), r["what"])
        r["bad_value"] = torch.where(new, value, r["bad_value"])

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not self._record:
            return
        r = self._record
        # the value backward gets is divided by the accumulation count (and scaled by a GradScaler)
        value = loss.detach().float().reshape(()) * trainer.accumulate_grad_batches
        self._mark(~torch.isfinite(value), LOSS, value)
        clean = r["first_bad"] < 0
        r["last_loss"] = torch.where(clean, value, r["last_loss"])
        r["first_loss"] = torch.where(r["step"] == r["start"], value, r["first_loss"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._record:
            return
        if self.check_gradients and getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                peak = torch.nn.utils.get_total_norm(grads, norm_type=math.inf).to(torch.float32)
                self._mark(~torch.isfinite(peak), GRADIENT, peak)
        self._record["step"] = self._record["step"] + 1

    # --- looks ----------------------------------------------------------------------------------------

    def _due(self, trainer) -> bool:
        every = self.look_every_n_steps
        if every is None:
            every = trainer.log_every_n_steps if trainer.strategy.root_device.type == "xla" else 1
        return trainer.global_step % max(every, 1) == 0

    def read(self, trainer) -> Optional[Reading]:
        """The record as host values (gathered from every rank, the earliest bad step winning); None when
        every value so far was finite."""
        r = self._record
        if not r:
            return None
        names = ("first_bad", "what", "bad_value", "last_loss", "first_loss")
        if trainer.world_size > 1:
            ints = trainer.strategy.all_gather(torch.stack([r["first_bad"], r["what"]])).reshape(-1, 2)
            floats = trainer.strategy.all_gather(torch.stack([r[k] for k in names[2:]])).reshape(-1, 3)
            found = [(int(i[0]), int(i[1]), *map(float, f)) for i, f in zip(ints.tolist(), floats.tolist())
                     if i[0] >= 0]
            return Reading(*min(found)) if found else None
        first_bad = int(r["first_bad"].item())  # a materialised scalar: a copy, no graph on XLA
        if first_bad < 0:
            return None
        return Reading(first_bad, *(t.item() for t in (r[k] for k in names[1:])))

    def look(self, trainer, pl_module, batch=None, weights: bool = False) -> None:
        """Raise `TrainingDiverged` if any value so far was not finite (with `weights`, the module's weights
        are checked too)."""
        reading = self.read(trainer)
        if reading is not None:
            raise TrainingDiverged(self.explain(trainer, pl_module, reading, batch))
        if weights:
            bad = non_finite_tensors(weights_of(pl_module))
            if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
                raise TrainingDiverged(self.weights_message(trainer, bad))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # micro-batches of an accumulating step share its global_step: one look per optimizer step
        if self._due(trainer) and trainer.global_step != self._looked_at:
            self._looked_at = trainer.global_step
            self.look(trainer, pl_module, batch)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.look(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Raising here stops the save before any file is written: the previous checkpoint stays whole."""
        reading = self.read(trainer)
        if reading is not None:
            raise TrainingDiverged(self.explain(trainer, pl_module, reading))
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise TrainingDiverged(self.weights_message(trainer, bad))
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self.look(trainer, pl_module, weights=True)

    # --- what the message says ------------------------------------------------------------------------

    def explain(self, trainer, pl_module, reading: Reading, batch=None) -> str:
        step = reading.first_bad + 1  # optimizer steps count from 1, as the checkpoint names do
        current = reading.first_bad == trainer.global_step - 1  # its batch and gradients are still here
        if reading.what == LOSS:
            found = f"the loss of step {step} is {reading.bad_value}"
        else:
            found = f"the gradients of step {step} hold inf/NaN (largest magnitude {reading.bad_value})"
            names = non_finite_gradients(pl_module) if current else []
            found += f", in {listed(names)}" if names else ""
        if not math.isnan(reading.last_loss):
            found += (f"; the last finite loss was {reading.last_loss:.4g} ({reading.first_loss:.4g} at the "
                      f"run's first step, {self.start_step + 1})")
        cause = likely_cause(trainer, reading, reading.first_bad == self.start_step,
                             batch if current else None)
        return (f"training diverged: {found}. Likely cause: {cause}. The run stopped there and no checkpoint "
                f"holds its weights; {self.kept(trainer)}. To name the operation that made the first "
                "non-finite value, re-run with trainer.detect_anomaly=true (slow).")

    def weights_message(self, trainer, bad: list[str]) -> str:
        return (f"training diverged: after step {trainer.global_step} the weights hold inf/NaN in "
                f"{listed(bad) if bad else 'another rank'}, though every loss and gradient was finite: an "
                f"update overflowed (learning rate {current_lr(trainer):g}: lower optimizer.lr). No "
                f"checkpoint holds these weights; {self.kept(trainer)}.")

    def kept(self, trainer) -> str:
        paths = [getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
                 for cb in trainer.checkpoint_callbacks]
        paths = [p for p in paths if p]
        if paths and self.saved_step is not None:
            return (f"the newest checkpoint, {paths[0]} (step {self.saved_step}), was written before it and "
                    f"holds finite weights: resume from it with ckpt_path={paths[0]} and a change (a lower "
                    "optimizer.lr, a longer scheduler.warmup_steps, other data)")
        if trainer.ckpt_path:
            return (f"this run wrote no checkpoint before it; the one it resumed from, {trainer.ckpt_path}, "
                    "is untouched")
        return "this run wrote no checkpoint before it"


def weights_of(pl_module) -> dict:
    """The module's parameters as this rank holds them (an FSDP shard, not a gathered state dict)."""
    return dict(pl_module.named_parameters())


def current_lr(trainer) -> float:
    optimizers = trainer.optimizers
    return float(optimizers[0].param_groups[0].get("lr") or 0.0) if optimizers else math.nan


def non_finite_gradients(pl_module) -> list[str]:
    return non_finite_tensors({k: p.grad for k, p in pl_module.named_parameters() if p.grad is not None})


def non_finite_inputs(batch) -> list[str]:
    if not isinstance(batch, Mapping):
        return []
    return [k for k, v in batch.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def likely_cause(trainer, reading: Reading, first_step: bool, batch=None) -> str:
    """The most probable of the usual causes, from the record and (when the look is at the bad step) its
    batch."""
    inputs = non_finite_inputs(batch) if batch is not None else []
    if inputs:
        return f"the batch itself holds inf/NaN (in {', '.join(inputs)}): find and drop those rows"
    precision = str(trainer.precision)
    if precision.startswith("16"):
        return (f"precision={precision} overflowed (float16's largest value is 65504): train in bf16-mixed "
                "or 32-true")
    if reading.what == LOSS and first_step:
        return ("it is the run's first step, before any update: the starting weights overflow on this batch, "
                "or the batch is bad")
    lr = current_lr(trainer)
    rose = not math.isnan(reading.last_loss) and reading.last_loss > 1.5 * reading.first_loss
    if rose or lr >= 1.0:
        return (f"the learning rate ({lr:g} at this step) is too large: the updates overshoot until the "
                "activations overflow. Lower optimizer.lr, lengthen scheduler.warmup_steps or set "
                "trainer.gradient_clip_val")
    if reading.what == LOSS:
        return ("a bad batch, or activations that overflowed although the loss was not rising (a too large "
                "learning rate usually shows a rising loss first)")
    return ("a non-finite gradient from a finite loss: an operation without a derivative at its input (sqrt "
            "or log of 0, a division by 0) or an overflow in backward")


def guard_of(trainer) -> Optional[DivergenceGuard]:
    return next((c for c in trainer.callbacks if isinstance(c, DivergenceGuard)), None)
