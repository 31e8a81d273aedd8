"""The sampler's fixed-shape decoding step, captured once in a CUDA graph and replayed.

Eager PyTorch launches each of a step's few hundred kernels from Python; at small batches their host time
is longer than the GPU needs to stream the step's weights, so the GPU waits between kernels (the README's
GPU table, from `benchmarks/bench.py --device cuda`, measures what a graph saves). A CUDA graph replays the
recorded launches in one call. A graph reads and writes the tensors it was captured with, so the sampler's
loop state (the cache, tokens, codes, step index, noise buffer) lives in a `Slot` that the model keeps in
its `GraphSlots` between calls: a later call with the same key (the options that shape the step,
`GenerationConfig.graph_key`, the shapes and the weights) refills those tensors and replays the graph the
first call captured.

`COUNTS` counts captures and replays in the whole process. It is the one module-level object here, and it
only counts: no generation reads it to decide anything, so one model's calls cannot change another's;
tests and the benchmark compare it before and after a call to see that a warm call captures nothing.

Random numbers are drawn inside the graph from the slot's own CUDA generators (one per block of rows that
has its own), registered with the graph (PyTorch's graph-safe RNG moves their offsets on at every replay);
the caller's generator states are copied in before the loop and back after it, so a seed gives the codes
of the eager fixed-shape loop.

On any device but CUDA the sampler refuses these modes with an error rather than falling back to the eager
loop: asking for a graph and silently not getting one would hide a several-fold slowdown.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

MODES = ("cuda_graph", "cuda_graph_compiled")


@dataclass
class Counts:
    captures: int = 0
    replays: int = 0
    warmup_steps: int = 0  # eager steps run before a capture (each is a real step of its generation)


COUNTS = Counts()


def check_device(device: torch.device, mode: str) -> None:
    if device.type != "cuda":
        raise ValueError(f"step_mode={mode!r} captures the decoding step in a CUDA graph and needs the model "
                         f"on a CUDA device; it is on {device.type} (move it with model.to('cuda'), or use "
                         f"step_mode='static' for the same fixed-shape step without a graph)")


class GraphedStep:
    """Calls `fn` (no arguments; it reads and writes only tensors that outlive this object): the first call
    runs it eagerly on a side stream and then captures it, every later call replays the capture."""

    def __init__(self, fn: Callable[[], None], generators: list, compile: bool = False):
        # dynamic=False: one shape for every step, so nothing is traced twice
        self.fn: Optional[Callable[[], None]] = torch.compile(fn, dynamic=False) if compile else fn
        self.generators = generators
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            COUNTS.replays += 1
            return
        # the warm-up creates cuBLAS handles and workspaces (and compiles) outside the capture; it is a real
        # step, and the capture that follows only records
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.fn()
        torch.cuda.current_stream().wait_stream(stream)
        COUNTS.warmup_steps += 1
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            self.fn()
        self.graph, self.fn = graph, None  # fn holds the model, which holds this step: no cycle to keep
        COUNTS.captures += 1


@dataclass
class Slot:
    """What one model keeps between generations: the loop state, its generator and the captured step."""

    key: tuple
    loop: Any = None  # the sampler's loop state, built on first use
    generators: list = field(default_factory=list)
    step: Optional[GraphedStep] = None
    busy: bool = False  # a generation is running on it

    def done(self) -> None:
        self.busy = False

    def run_step(self, fn: Callable[[], None], compile: bool) -> None:
        if self.step is None:
            self.step = GraphedStep(fn, self.generators, compile)
        self.step()

    def take_generator_states(self, generators: list) -> None:
        """The callers' generators (one per block of rows; none with supplied noise) into the slot's own."""
        for theirs, mine in zip(generators, self.generators):
            if theirs.device.type != "cuda":
                raise ValueError(f"a CUDA graph draws its noise on the GPU; the generator is on "
                                 f"{theirs.device.type} (pass torch.Generator(device='cuda') or a seed)")
            mine.set_state(theirs.get_state())

    def give_generator_states(self, generators: list) -> None:
        for theirs, mine in zip(generators, self.generators):  # as if they had drawn the noise themselves
            theirs.set_state(mine.get_state())


class GraphSlots:
    """A model's kept slot (`DalleBart.graph_slots`): at most one, so a model holds one graph and its cache.
    A copy or a pickle of the model starts with none: a graph points at the original's tensors."""

    def __init__(self) -> None:
        self.kept: Optional[Slot] = None
        self._lock = threading.Lock()

    def take(self, key: tuple, device: torch.device, generators: int = 1) -> Slot:
        """The kept slot for `key`, marked busy until `done()`. A kept one with another key is dropped (its
        cache and graph memory with it). While the kept one is busy (another thread, or a stream not yet
        finished, generating on this model) the caller gets a slot of its own that is not kept: sharing
        would let two generations overwrite each other's tensors."""
        with self._lock:
            kept = self.kept
            if kept is not None and kept.key == key and not kept.busy:
                kept.busy = True
                return kept
            new = Slot(key, generators=[torch.Generator(device=device) for _ in range(generators)], busy=True)
            if kept is None or not kept.busy:
                self.kept = new
            return new

    def release(self) -> None:
        """Frees what the model keeps for graph replays: the KV cache and the graph."""
        with self._lock:
            self.kept = None

    def __deepcopy__(self, memo) -> "GraphSlots":
        return GraphSlots()

    def __reduce__(self):
        return GraphSlots, ()


def weights_key(module: nn.Module) -> tuple:
    # a graph holds raw pointers: after model.to(...) or .half() the old weights may be freed
    return tuple(p.data_ptr() for p in module.parameters())
