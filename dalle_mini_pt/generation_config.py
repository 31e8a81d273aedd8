"""`GenerationConfig`: every sampling option, validated in one place, and its command-line flags."""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import cuda_graph

STEP_MODES = ("auto", "dynamic", "static", *cuda_graph.MODES)
# what torch.Generator.manual_seed takes without remapping (it folds negative seeds onto positive ones)
SEED_RANGE = (0, 2**64 - 1)
# The sampler divides and scales float32 (or bfloat16) logits by these: past the bounds they overflow to
# inf and the draws turn into NaN or ties, so a bounded range is refused up front instead.
TEMPERATURE_RANGE = (1e-3, 1e3)
CONDITION_SCALE_RANGE = (-1e3, 1e3)


def _option(default, help: str, type=None):
    return field(default=default, metadata={"help": help, "type": type or (lambda v: v)})


@dataclass(frozen=True)
class GenerationConfig:
    """Every sampling option, checked in one place. The defaults are the reference `generate`'s (plain
    sampling, no super-conditioning); each caller states its own in one place: the pipeline (the reference
    notebook's, `pipeline.DEFAULT_GENERATION`), the training callback and the embedded default's evaluation
    (their Hydra configs), the benchmark (min-dalle's). `metadata["help"]` is what the command lines show."""

    num_images: int = _option(1, "images per prompt", int)
    top_k: Optional[int] = _option(None, "sample among the k likeliest codes (default: all)", int)
    top_p: Optional[float] = _option(None, "sample among the likeliest codes holding this probability mass",
                                     float)
    min_p: Optional[float] = _option(None, "drop codes less likely than this fraction of the likeliest one",
                                     float)
    temperature: float = _option(1.0, "divides the logits: below 1 sharper, above 1 more varied", float)
    condition_scale: float = _option(1.0, "super-conditioning: uncond + scale * (cond - uncond); 1 is off",
                                     float)
    seed: Optional[int] = _option(None, "makes a run repeatable (default: a fresh random seed)", int)
    step_mode: str = _option("auto", "how each step runs: dynamic (shapes follow the codes so far), static "
                             "(one shape for every step), cuda_graph (static, captured once and replayed; "
                             "CUDA), cuda_graph_compiled (the same, torch.compile'd first); auto: static on "
                             "XLA, else dynamic", str)

    def __post_init__(self) -> None:
        def fail(key: str, problem: str, fix: str) -> None:
            raise ValueError(f"{key}={getattr(self, key)!r} {problem} ({fix})")

        if not (_whole(self.num_images) and self.num_images >= 1):
            fail("num_images", "must be a whole number >= 1", "images per prompt")
        if self.top_k is not None and not (_whole(self.top_k) and self.top_k >= 1):
            fail("top_k", "must be a whole number >= 1", "use None to disable it")
        if self.top_p is not None and not (_finite(self.top_p) and 0.0 < self.top_p <= 1.0):
            fail("top_p", "must be in (0, 1]", "use None or 1.0 to disable it")
        if self.min_p is not None and not (_finite(self.min_p) and 0.0 <= self.min_p <= 1.0):
            fail("min_p", "must be in [0, 1]", "use None or 0 to disable it")
        low, high = TEMPERATURE_RANGE
        if not (_finite(self.temperature) and self.temperature > 0):
            fail("temperature", "must be a finite number > 0", "use top_k=1 for greedy decoding")
        if not low <= self.temperature <= high:
            fail("temperature", f"must be between {low:g} and {high:g}",
                 "beyond them the logits overflow; use top_k=1 for greedy decoding")
        low, high = CONDITION_SCALE_RANGE
        if not (_finite(self.condition_scale) and low <= self.condition_scale <= high):
            fail("condition_scale", f"must be a finite number between {low:g} and {high:g}",
                 "1 turns super-conditioning off; the reference notebook uses 10")
        low, high = SEED_RANGE
        if self.seed is not None and not (_whole(self.seed) and low <= self.seed <= high):
            fail("seed", f"must be a whole number in {low}..2**64-1",
                 "what torch.Generator takes; or None for a fresh random seed")
        if self.step_mode not in STEP_MODES:
            fail("step_mode", "is not a step mode", f"use one of {STEP_MODES}")

    @property
    def guided(self) -> bool:
        return self.condition_scale != 1.0

    @property
    def graphed(self) -> bool:
        return self.step_mode in cuda_graph.MODES

    def replace(self, **changes) -> "GenerationConfig":
        """A copy with `changes`; an unknown name is refused, listing the options."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; the options are {self.names()}")
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GenerationConfig":
        return cls().replace(**values)

    def check_model(self, config) -> None:
        """The checks that need the model's config (a `DalleBartConfig`)."""
        if self.top_k is not None and self.top_k > config.codebook_size:
            raise ValueError(f"top_k={self.top_k} must be between 1 and the codebook size "
                             f"{config.codebook_size} (use None to disable it)")

    def check_device(self, device) -> None:
        """The checks that need the device the model runs on: CUDA graphs need CUDA."""
        if self.graphed:
            cuda_graph.check_device(torch.device(device), self.step_mode)

    def with_seed(self) -> "GenerationConfig":
        """This config with its seed set: its own, or a fresh random one drawn here, so that results can
        name the seed that made them."""
        if self.seed is not None:
            return self
        return self.replace(seed=random.SystemRandom().randrange(2**31))


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def add_arguments(parser, defaults: GenerationConfig, description: str = "") -> None:
    """One command-line flag per option (`--top-k`, …); `from_arguments` fills the unset ones from
    defaults."""
    group = parser.add_argument_group("sampling", description)
    for f in dataclasses.fields(GenerationConfig):
        group.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["type"], default=None,
                           help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)})")


def from_arguments(args, defaults: GenerationConfig) -> GenerationConfig:
    return defaults.replace(**{k: v for k in GenerationConfig.names() if (v := getattr(args, k)) is not None})
