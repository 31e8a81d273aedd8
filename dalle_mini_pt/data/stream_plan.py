"""Which rows one (rank, worker) reads in an epoch, and in what order: index arithmetic only, no I/O.

An epoch is a seeded permutation of the shards' row groups ("chunks"), read as one stream of kept rows.
Each rank takes an equal contiguous part of that stream (the remainder, fewer than world_size rows, waits
for another epoch), so DDP/XLA ranks run the same number of steps and no row is read twice. A rank's part is
cut into whole batches per DataLoader worker, and each worker shuffles its part through a shuffle buffer.
Everything is a function of (seed, epoch, rank, worker), so a resumed run can recompute the order and skip
what was consumed without reading it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stream_spec import StreamSpec

# offsets for the independent random streams of one (seed, epoch, rank, worker)
SHUFFLE_STREAM, BLANK_STREAM = 1, 2


@dataclass(frozen=True)
class Segment:
    """Kept rows lo..hi of chunk `chunk`, which are stream positions start..start + (hi - lo) of a worker."""

    chunk: int
    lo: int
    hi: int
    start: int


@dataclass
class WorkerPlan:
    segments: list[Segment]
    order: np.ndarray  # the worker's stream positions in the order they are emitted
    num_batches: int


def chunk_order(num_chunks: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_chunks)
    return np.random.default_rng([seed, epoch]).permutation(num_chunks)


def rank_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    per = total // world_size  # equal for every rank: a rank with one batch more would hang DDP's all-reduce
    return rank * per, (rank + 1) * per


def worker_ranges(n: int, batch_size: int, num_workers: int, drop_last: bool) -> list[tuple[int, int]]:
    """Whole batches per worker, so a rank has at most one short batch (kept only when not drop_last)."""
    full = n // batch_size
    ranges, start = [], 0
    for w in range(num_workers):
        stop = start + (full // num_workers + (w < full % num_workers)) * batch_size
        ranges.append((start, stop))
        start = stop
    if not drop_last and start < n:
        ranges[-1] = (ranges[-1][0], n)  # the short tail batch goes to the last worker
    return ranges


def batch_count(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def resume_point(consumed: int, counts: list[int]) -> tuple[list[int], int]:
    """Where `consumed` batches leave each worker's sequence, and which worker owes the next batch.

    A DataLoader returns worker batches round-robin from worker 0, passing over workers that have run out.
    A resumed loader again starts at worker 0, so its worker w takes the role of worker (w + next) % n:
    the round-robin then continues exactly where the interrupted one stopped."""
    skips, left, r, last = [0] * len(counts), consumed, 0, -1
    while left > 0 and r < max(counts, default=0):
        for w in [w for w, c in enumerate(counts) if c > r][:left]:
            skips[w], left, last = skips[w] + 1, left - 1, w
        r += 1
    waiting = [w for w in range(len(counts)) if skips[w] < counts[w]]
    later = [w for w in waiting if w > last]  # cyclic order: after the last worker served, then wrap
    return skips, (later or waiting or [0])[0]


def segments(order: np.ndarray, counts: np.ndarray, start: int, stop: int) -> list[Segment]:
    """Cut stream positions start..stop out of the chunks taken in `order`."""
    sizes = counts[order]
    ends = np.cumsum(sizes)
    out, pos = [], 0
    for i in range(int(np.searchsorted(ends, start, side="right")), len(order)):
        begin = int(ends[i] - sizes[i])
        if begin >= stop:
            break
        lo, hi = max(start, begin) - begin, min(stop, int(ends[i])) - begin
        if hi > lo:
            out.append(Segment(int(order[i]), lo, hi, pos))
            pos += hi - lo
    return out


def shuffle_buffer(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order of items 0..n-1 pushed through a shuffle buffer (the reference's streaming shuffle):
    reads stay near-sequential, so only about `buffer_size` rows are held at once."""
    if buffer_size <= 1 or n <= 1:
        return np.arange(n)
    buf = list(range(min(buffer_size, n)))
    out = []
    for item, j in zip(range(len(buf), n), rng.integers(0, len(buf), size=max(0, n - len(buf))).tolist()):
        out.append(buf[j])
        buf[j] = item
    out.extend(rng.permutation(buf).tolist())
    return np.asarray(out, dtype=np.int64)


def worker_plan(counts: np.ndarray, spec: StreamSpec, *, epoch: int, worker: int) -> WorkerPlan:
    """The rows worker `worker` of rank `spec.rank` reads in `epoch`, where `counts` holds each chunk's
    kept rows."""
    r0, r1 = rank_range(int(counts.sum()), spec.rank, spec.world_size)
    w0, w1 = worker_ranges(r1 - r0, spec.batch_size, spec.workers, spec.drop_last)[worker]
    segs = segments(chunk_order(len(counts), spec.seed, epoch, spec.shuffle), counts, r0 + w0, r0 + w1)
    rng = np.random.default_rng([spec.seed, epoch, spec.rank, worker, SHUFFLE_STREAM])
    order = shuffle_buffer(w1 - w0, spec.shuffle_buffer if spec.shuffle else 1, rng)
    return WorkerPlan(segs, order, batch_count(w1 - w0, spec.batch_size, spec.drop_last))


def rank_batch_counts(total: int, spec: StreamSpec) -> list[int]:
    """Batches each worker of a rank yields in one epoch (the same for every rank)."""
    n = total // spec.world_size
    return [batch_count(b - a, spec.batch_size, spec.drop_last)
            for a, b in worker_ranges(n, spec.batch_size, spec.workers, spec.drop_last)]
