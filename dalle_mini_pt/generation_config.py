"""`GenerationConfig`: every sampling option, validated in one place, and its command-line flags."""

from __future__ import annotations

import argparse
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


def option_field(default, help: str, type=None, *, graph):
    """A `GenerationConfig` field. `help` is what the command lines show, `type` what parses the flag. `graph`
    (no default: every option states it) is what a captured CUDA graph of the decoding step depends on:
    True, the value (a Python value inside the step, as top_k is); False, nothing (the step reads it from
    a tensor written at every call, or it acts outside the step); or a function of the value (what of it
    the graph depends on). `GenerationConfig.graph_key` is made from these alone."""
    return field(default=default, metadata={"help": help, "type": type or (lambda v: v), "graph": graph})


def _guided(condition_scale) -> bool:
    return condition_scale != 1.0


@dataclass(frozen=True)
class GenerationConfig:
    """Every sampling option, checked in one place. The defaults are the reference `generate`'s (plain
    sampling, no super-conditioning); each caller states its own in one place: the pipeline (the reference
    notebook's, `pipeline.DEFAULT_GENERATION`), the training callback and the embedded default's evaluation
    (their Hydra configs), the benchmark (min-dalle's).

    A new option is a field here (made with `option_field`, its check in `__post_init__`) and its use in
    `warpers.apply_warpers`, which is handed the whole config; its command-line flag, its place in saved
    settings and PNG chunks, and its part in the CUDA-graph key follow from the field."""

    # the rows of every tensor the step touches
    num_images: int = option_field(1, "images per prompt", int, graph=True)
    # the warpers take these as Python values inside the step
    top_k: Optional[int] = option_field(None, "sample among the k likeliest codes (default: all)", int,
                                        graph=True)
    top_p: Optional[float] = option_field(None, "sample among the likeliest codes holding this probability "
                                          "mass", float, graph=True)
    min_p: Optional[float] = option_field(None, "drop codes less likely than this fraction of the likeliest "
                                          "one", float, graph=True)
    # a tensor of the loop, written at every call
    temperature: float = option_field(1.0, "divides the logits: below 1 sharper, above 1 more varied", float,
                                      graph=False)
    # whether the unconditional rows run shapes the step; the scale itself is a tensor of the loop
    condition_scale: float = option_field(1.0, "super-conditioning: uncond + scale * (cond - uncond); 1 is "
                                          "off", float, graph=_guided)
    # the draws come from generators whose state is copied in before the loop
    seed: Optional[int] = option_field(None, "makes a run repeatable (default: a fresh random seed)", int,
                                       graph=False)
    step_mode: str = option_field("auto", "how each step runs: dynamic (shapes follow the codes so far), "
                                  "static (one shape for every step), cuda_graph (static, captured once and "
                                  "replayed; CUDA), cuda_graph_compiled (the same, torch.compile'd first); "
                                  "auto: static on XLA, else dynamic", str, graph=True)

    def __post_init__(self) -> None:
        def fail(key: str, problem: str, fix: str) -> None:
            raise ValueError(f"{key}={getattr(self, key)!r} {problem} ({fix})")

        if not (is_whole(self.num_images) and self.num_images >= 1):
            fail("num_images", "must be a whole number >= 1", "images per prompt")
        if self.top_k is not None and not (is_whole(self.top_k) and self.top_k >= 1):
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
        if self.seed is not None and not (is_whole(self.seed) and low <= self.seed <= high):
            fail("seed", f"must be a whole number in {low}..2**64-1",
                 "what torch.Generator takes; or None for a fresh random seed")
        if self.step_mode not in STEP_MODES:
            fail("step_mode", "is not a step mode", f"use one of {STEP_MODES}")

    @property
    def guided(self) -> bool:
        return _guided(self.condition_scale)

    @property
    def graphed(self) -> bool:
        return self.step_mode in cuda_graph.MODES

    def graph_key(self) -> tuple:
        """What of this config a captured CUDA graph of the decoding step depends on, from each field's
        `graph` declaration (`option_field`): two configs with one key can replay one graph."""
        key = []
        for f in dataclasses.fields(self):
            if "graph" not in f.metadata:
                raise TypeError(f"{type(self).__name__}.{f.name} does not say whether it shapes the CUDA "
                                "graph: declare it with option_field(..., graph=...)")
            role, value = f.metadata["graph"], getattr(self, f.name)
            if role is not False:
                key.append((f.name, value if role is True else role(value)))
        return tuple(key)

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


def is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def with_options(config: Optional[GenerationConfig], options: dict,
                 default: Optional[GenerationConfig] = None) -> GenerationConfig:
    """`config` (None: `default`, else `GenerationConfig()`) changed by sampling options given by name: where
    a user's options meet a config, once (`generate`, the pipeline's call, the server's request), as
    transformers' `generate` merges its keyword arguments; what runs below takes the finished config."""
    if config is not None and not isinstance(config, GenerationConfig):
        raise TypeError(f"generation_config must be a GenerationConfig or None; got {type(config).__name__} "
                        "(give options by name, or GenerationConfig.from_dict(values))")
    return (config or default or GenerationConfig()).replace(**options)


def add_arguments(parser, defaults: GenerationConfig, description: str = "") -> None:
    """One command-line flag per option (`--top-k`, …), each value checked as the config checks it while
    the command line is parsed (a bad one exits 2 before anything loads); `given_options` collects those
    given, for the one merge with the defaults."""
    group = parser.add_argument_group("sampling", description)
    for f in dataclasses.fields(GenerationConfig):
        group.add_argument("--" + f.name.replace("_", "-"), type=_flag_type(f), default=None,
                           help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)})")


def _flag_type(f: dataclasses.Field):
    convert = f.metadata["type"]

    def parse(text: str):
        value = convert(text)  # a ValueError here is argparse's "invalid int value"
        try:
            GenerationConfig(**{f.name: value})
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    parse.__name__ = getattr(convert, "__name__", f.name)  # what argparse names in "invalid … value"
    return parse


def given_options(args) -> dict:
    """The sampling flags given on the command line, by name (those left out take the defaults)."""
    return {k: v for k in GenerationConfig.names() if (v := getattr(args, k)) is not None}
