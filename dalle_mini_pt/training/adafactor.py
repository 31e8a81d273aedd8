"""HF transformers' Adafactor without a host sync per parameter per step (conf/optimizer/adafactor.yaml)."""

from __future__ import annotations

import math

from transformers.optimization import Adafactor as HFAdafactor


class Adafactor(HFAdafactor):
    """The same update as `transformers.optimization.Adafactor`, with the parameter scale kept on the device.

    HF's `_get_lr` scales the step by `max(eps[1], RMS)`: a Python comparison of a float with the device
    tensor `RMS`. On XLA that runs the graph traced so far and copies the result to the host, once for every
    parameter in every step. `RMS.clamp(min=eps[1])` is the same value without leaving the device.
    """

    @staticmethod
    def _get_lr(param_group, param_state):
        lr = param_group["lr"]
        if param_group["relative_step"]:
            # `step` is a Python int, so this stays on the host as in HF
            min_step = 1e-6 * param_state["step"] if param_group["warmup_init"] else 1e-2
            lr = min(min_step, 1.0 / math.sqrt(param_state["step"]))
        if param_group["scale_parameter"]:
            return param_state["RMS"].clamp(min=param_group["eps"][1]) * lr
        return lr
