"""The demo's job queue: requests that arrive close together are merged into one sampler call (up to
`batch_images` images), since one batched call costs far less than several; one batch runs on the device
at a time and the rest wait, each knowing its place, in a queue of bounded length.

A merged request keeps its own seed: its rows draw their Gumbel noise from its own generator (the sampler's
(generator, rows) pairs), so its images are the ones it gets alone, and the ones `pipe(prompts, seed=s)`
gives. Requests are merged when their sampling options other than the seed agree (and, for completion,
their kept rows); the others wait for a later batch, in arrival order. Every request is checked completely
(`DalleMiniPipeline.check_request`) before it queues, and a batch that fails anyway is run again one
request at a time, so only the faulty one fails. No web code here: the HTTP routes and the page submit
`Job`s, read their events, and turn the exceptions below into answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..generation_config import GenerationConfig
from ..pipeline import DalleMiniPipeline, PromptImages
from ..request_checks import RequestTooLarge
from ..warpers import seeded_generator
from .batch_window import BatchWindow
from .settings import ServerSettings


class BadRequest(ValueError):
    """A request the batcher refuses before it queues, with the reason (the pipeline's checks)."""


class TooLarge(BadRequest):
    """A request over a size bound: more images than one batch, or a prompt or image too big."""


class QueueFull(Exception):
    """The queue holds `max_queue` requests; `retry_after` seconds is a guess at when one place frees."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping: it takes no new request and runs no waiting one."""


class WaitedTooLong(Exception):
    """The request waited in the queue past the server's timeout before its batch started."""


class GenerationFailed(Exception):
    """Sampling failed for this request even when it was run alone (its cause is chained)."""


@dataclass(eq=False)
class Job:
    prompts: list[str]
    config: GenerationConfig  # the seed is always set: the caller's, or one drawn at submission
    keep_rows: int = 0
    init_image: Optional[np.ndarray] = None  # (resolution, resolution, 3) uint8, fitted already
    stream: bool = False  # wants partial images while it is drawn
    submitted: float = field(default_factory=time.monotonic)
    events: queue.Queue = field(default_factory=queue.Queue, repr=False)
    results: Optional[list[PromptImages]] = None
    _final: Optional[tuple] = field(default=None, repr=False)
    _listeners: list[Callable] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def images(self) -> int:
        return len(self.prompts) * self.config.num_images

    def merge_key(self):
        return self.config.replace(seed=0), self.keep_rows

    def put(self, event: tuple) -> None:
        """An event for whoever reads this job: ("partial", codes written, results), ("done", results) or
        ("error", exception); the last two end it."""
        with self._lock:
            if self._final is not None:
                return
            if event[0] != "partial":
                self._final = event
            listeners = list(self._listeners)
        self.events.put(event)
        for listener in listeners:
            listener(event)

    def next_event(self, timeout: Optional[float] = None):
        """The next event, or None when nothing came within `timeout`."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def result(self, timeout: Optional[float] = None) -> list[PromptImages]:
        """Block until the job is done; its partial images are skipped. Raises what failed it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self.next_event(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if event is None:
                raise TimeoutError("the job did not finish in time")
            if event[0] == "done":
                return event[1]
            if event[0] == "error":
                raise event[1]

    async def final(self) -> tuple:
        """The ending event, awaited on the event loop without holding a thread while the job waits."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(event):
            if event[0] != "partial":
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(event))

        with self._lock:
            final = self._final
            if final is None:
                self._listeners.append(settle)
        return final if final is not None else await future


class Batcher:
    """One worker thread runs batches of merged jobs on the pipeline; `submit` checks a request and queues
    it. The counters (`sampler_calls`, `jobs_done`, `waiting`, `running`) are plain values that /health
    reads without the batcher's lock. `on_batch(images, seconds)` is told after each sampler call."""

    def __init__(self, pipe: DalleMiniPipeline, settings: ServerSettings = ServerSettings(),
                 on_batch: Optional[Callable[[int, float], None]] = None):
        self.pipe, self.settings, self.on_batch = pipe, settings, on_batch
        self.batch_images = settings.batch_images
        self.sampler_calls = self.jobs_done = self.running = 0
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._window = BatchWindow(settings.wait, settings.batch_images)
        self._stopping = False
        self._batch_seconds = 0.0  # a running mean, for Retry-After
        self._thread = threading.Thread(target=self._work, name="dalle-mini-pt-batcher", daemon=True)
        self._thread.start()

    # --- submitting ------------------------------------------------------------------------------------

    def submit(self, prompts, options: Optional[dict] = None, *, init_image: Optional[np.ndarray] = None,
               keep_rows: int = 0, stream: bool = False) -> Job:
        """Check a request completely and queue it; `BadRequest` (or `TooLarge`) names what is wrong,
        `QueueFull` and `ShuttingDown` say why it was not taken."""
        try:
            config = self.pipe.settings(**(options or {})).with_seed()  # the request's one merge
            prompts = self.pipe.check_request(prompts, config, keep_rows=keep_rows,
                                              has_image=init_image is not None,
                                              max_prompt_chars=self.settings.max_prompt_chars)
        except RequestTooLarge as e:
            raise TooLarge(str(e)) from None
        except (TypeError, ValueError) as e:
            raise BadRequest(str(e)) from None
        resolution = self.pipe.vqgan.config.resolution
        if keep_rows and (init_image.shape != (resolution, resolution, 3) or init_image.dtype != np.uint8):
            raise BadRequest(f"init_image must be fitted first ({resolution}x{resolution}x3 uint8: "
                             f"request_checks.read_init_image); got {init_image.shape} {init_image.dtype}")
        job = Job(prompts, config, keep_rows, init_image if keep_rows else None, stream)
        if job.images > self.batch_images:
            raise TooLarge(f"{len(job.prompts)} prompt(s) x num_images={job.config.num_images} is "
                           f"{job.images} images; this server samples at most {self.batch_images} at once "
                           "(--batch-images)")
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down: it takes no new requests")
            if len(self._waiting) >= self.settings.max_queue:
                raise QueueFull(f"the queue is full ({self.settings.max_queue} requests wait, --max-queue); "
                                "try again shortly", self.retry_after())
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely moved on by one batch (at least 1)."""
        return max(1, math.ceil(self._batch_seconds))

    def withdraw_if_late(self, job: Job) -> bool:
        """Answer a job that has waited past the timeout and has not started; True if it was withdrawn."""
        timeout = self.settings.timeout
        if timeout is None or time.monotonic() - job.submitted < timeout:
            return False
        with self._cond:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
        job.put(("error", WaitedTooLong(f"the request waited {timeout:g} s in the queue without starting "
                                        "(--timeout); try again when the server is less busy")))
        return True

    def position(self, job: Job) -> int:
        """0 while the job runs (or is done), else how many jobs wait before it, plus one."""
        with self._cond:  # held only while a batch is formed, never while one runs
            return self._waiting.index(job) + 1 if job in self._waiting else 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def drain(self) -> None:
        """Stop taking requests, answer every waiting one with `ShuttingDown`, let the running batch finish,
        and return when the worker has stopped."""
        with self._cond:
            self._stopping = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for job in waiting:
            job.put(("error", ShuttingDown("the server is shutting down: this request had not started; "
                                           "send it again when the server is back")))
        self._thread.join()

    close = drain

    async def outcome(self, job: Job) -> list[PromptImages]:
        """The job's results, awaited on the event loop; a job still waiting past the timeout is withdrawn
        (`WaitedTooLong`). Raises what failed it."""
        final = asyncio.ensure_future(job.final())
        timeout = self.settings.timeout
        while timeout is not None:
            left = timeout - (time.monotonic() - job.submitted)
            done, _ = await asyncio.wait({final}, timeout=max(left, 0.0) + 0.01)
            if done or self.withdraw_if_late(job) or self.position(job) == 0:
                break
        event = await final
        if event[0] == "error":
            raise event[1]
        return event[1]

    # --- the worker ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001  (a failed batch fails its jobs, never the server)
                self._isolate(batch, e)
            finally:
                with self._cond:
                    self.running = 0
                    demand = batch + self._waiting
                    self._window.batch_ended(len(demand), sum(j.images for j in demand), time.monotonic())

    def _isolate(self, batch: list[Job], error: Exception) -> None:
        """Run each member of a failed batch alone, so that only the faulty one fails."""
        if len(batch) == 1:
            self._finish(batch, [("error", _failed(error))])
            return
        for job in batch:
            try:
                self._run([job])
            except Exception as e:  # noqa: BLE001
                self._finish([job], [("error", _failed(e))])

    def _finish(self, batch: list[Job], events: list[tuple]) -> None:
        """Count the jobs done before telling them, so a job that has its result sees itself counted."""
        self.jobs_done += len(batch)
        for job, event in zip(batch, events):
            job.put(event)

    def _next_batch(self) -> Optional[list[Job]]:
        """Wait for a job, then for others to merge with it as long as the batch window says."""
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._waiting[0]
            while not self._stopping:
                batch = self._compatible(first)
                left = self._window.left(first.submitted, sum(j.images for j in batch), time.monotonic())
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            if self._stopping:
                return None
            batch = self._compatible(first)
            self._waiting = [j for j in self._waiting if j not in batch]
            self.running = len(batch)
            return batch

    def _compatible(self, first: Job) -> list[Job]:
        batch, images = [], 0
        for job in self._waiting:
            if job.merge_key() == first.merge_key() and images + job.images <= self.batch_images:
                batch.append(job)
                images += job.images
        return batch

    def _run(self, batch: list[Job]) -> None:
        start = time.monotonic()
        prompts = [p for job in batch for p in job.prompts]
        generators = [(seeded_generator(job.config.seed, self.pipe.device), job.images) for job in batch]
        keep_rows = batch[0].keep_rows
        images = [job.init_image for job in batch for _ in job.prompts] if keep_rows else None
        every = self.settings.every if any(job.stream for job in batch) else None
        length = self.pipe.model.config.image_length
        self.sampler_calls += 1
        for written, results in self.pipe.stream(prompts, batch[0].config, every=every, generator=generators,
                                                 init_image=images, keep_rows=keep_rows):
            shares = _shares(batch, results)
            if written < length:
                for job, mine in zip(batch, shares):
                    if job.stream:
                        job.put(("partial", written, mine))
                continue
            seconds = time.monotonic() - start
            self._batch_seconds = seconds if not self._batch_seconds else (
                0.8 * self._batch_seconds + 0.2 * seconds)
            if self.on_batch is not None:
                self.on_batch(sum(j.images for j in batch), seconds)
            for job, mine in zip(batch, shares):
                job.results = mine
            self._finish(batch, [("done", mine) for mine in shares])


def _failed(error: Exception) -> GenerationFailed:
    failed = GenerationFailed(f"generating failed: {type(error).__name__}: {error}")
    failed.__cause__ = error
    return failed


def _shares(batch: list[Job], results: list[PromptImages]) -> list[list[PromptImages]]:
    """Each job's results, named with its own prompts, seed and settings: what `pipe(job.prompts,
    seed=job.config.seed)` alone gives."""
    shares, start = [], 0
    for job in batch:
        shares.append([dataclasses.replace(r, seed=job.config.seed, settings=job.config,
                                           call_prompts=job.prompts, index=i)
                       for i, r in enumerate(results[start:start + len(job.prompts)])])
        start += len(job.prompts)
    return shares
