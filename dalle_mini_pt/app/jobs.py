"""The demo's job queue: requests that arrive within `wait` seconds of each other are merged into one
sampler call (up to `batch_images` images), since one batched call costs far less than several; one batch
runs on the device at a time and the rest wait, each knowing its place.

A merged request keeps its own seed: its rows draw their Gumbel noise from its own generator (the sampler's
(generator, rows) pairs), so its images are the ones it gets alone, and the ones `pipe(prompts, seed=s)`
gives. Requests are merged when their sampling options other than the seed agree (and, for completion,
their kept rows); the others wait for a later batch, in arrival order. No web code here: the HTTP API and
the Gradio UI both submit `Job`s and read their events.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from PIL import Image

from ..data.image_sources import load_image
from ..generation_config import GenerationConfig
from ..pipeline import DalleMiniPipeline, PromptImages
from ..warpers import seeded_generator

MAX_PROMPT_CHARS = 1000


class BadRequest(ValueError):
    """A request the server refuses, with the reason; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class ServerSettings:
    batch_images: int = 16  # most images in one sampler call
    wait: float = 0.05  # seconds a job waits for others to merge with
    every: Optional[int] = -1  # sampling steps between partial images in the UI (-1: one code row)
    max_image_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096


def decode_image(data: Union[str, bytes], resolution: int, settings: ServerSettings) -> np.ndarray:
    """base64 text or raw bytes of an image -> the VQGAN's input, fitted as the data encoder fits images;
    `BadRequest` for what is too big or not an image."""
    if isinstance(data, str):
        if len(data) > settings.max_image_bytes * 4 // 3 + 4:
            raise BadRequest(f"init_image is over {settings.max_image_bytes} bytes", status=413)
        try:
            data = base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("init_image is not valid base64") from None
    if len(data) > settings.max_image_bytes:
        raise BadRequest(f"init_image is over {settings.max_image_bytes} bytes", status=413)
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only: the size before any pixel
            w, h = im.size
    except Exception:
        raise BadRequest("init_image is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
    if w * h > settings.max_image_pixels:
        raise BadRequest(f"init_image is {w}x{h}, over {settings.max_image_pixels} pixels", status=413)
    try:
        return load_image(data, resolution)
    except Exception as e:
        raise BadRequest(f"init_image could not be decoded ({e})") from None


@dataclass
class Job:
    prompts: list[str]
    config: GenerationConfig  # the seed is always set: the caller's, or one drawn at submission
    keep_rows: int = 0
    init_image: Optional[np.ndarray] = None  # (resolution, resolution, 3) uint8, fitted already
    stream: bool = False  # wants partial images while it is drawn
    submitted: float = field(default_factory=time.monotonic)
    events: queue.Queue = field(default_factory=queue.Queue, repr=False)
    results: Optional[list[PromptImages]] = None

    @property
    def images(self) -> int:
        return len(self.prompts) * self.config.num_images

    def merge_key(self):
        return self.config.replace(seed=0), self.keep_rows

    def next_event(self, timeout: Optional[float] = None):
        """("partial", codes written, results), ("done", results) or ("error", exception); None when nothing
        came within `timeout`."""
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


class Batcher:
    """One worker thread runs batches of merged jobs on the pipeline; `submit` checks a request and queues
    it. `sampler_calls` and `jobs_done` count what it did (the tests and /health read them)."""

    def __init__(self, pipe: DalleMiniPipeline, batch_images: int = 16, wait: float = 0.05,
                 every: Optional[int] = -1):
        if batch_images < 1 or wait < 0:
            raise ValueError(f"batch_images={batch_images} must be >= 1 and wait={wait} >= 0 seconds")
        self.pipe, self.batch_images, self.wait, self.every = pipe, batch_images, wait, every
        self.sampler_calls = self.jobs_done = 0
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="dalle-mini-pt-batcher", daemon=True)
        self._thread.start()

    # --- submitting ------------------------------------------------------------------------------------

    def submit(self, prompts, options: Optional[dict] = None, *, init_image: Optional[np.ndarray] = None,
               keep_rows: int = 0, stream: bool = False) -> Job:
        """Check a request and queue it; a bad one raises `BadRequest` naming the problem."""
        job = Job(self._check_prompts(prompts), self._check_options(options or {}),
                  self._check_keep_rows(keep_rows, init_image), init_image, stream)
        if job.images > self.batch_images:
            raise BadRequest(f"{len(job.prompts)} prompt(s) x num_images={job.config.num_images} is "
                             f"{job.images} images; this server samples at most {self.batch_images} at "
                             "once (--batch-images)", status=413)
        with self._cond:
            if self._stopped:
                raise BadRequest("the server is shutting down", status=503)
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise BadRequest("no prompts given: send a prompt or a non-empty list of prompts")
        if not all(isinstance(p, str) for p in prompts):
            raise BadRequest("prompts must be strings")
        if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
            raise BadRequest(f"a prompt is longer than {MAX_PROMPT_CHARS} characters")
        return list(prompts)

    def _check_options(self, options: dict) -> GenerationConfig:
        try:  # GenerationConfig's own validation is the one place the option ranges live
            config = self.pipe.generation_config.replace(**options)
            config.check_model(self.pipe.model.config)
        except (TypeError, ValueError) as e:
            raise BadRequest(str(e)) from None
        if config.seed is None:
            config = config.replace(seed=random.SystemRandom().randrange(2**31))
        return config

    def _check_keep_rows(self, keep_rows, init_image) -> int:
        grid = self.pipe.vqgan.config.grid_size
        if isinstance(keep_rows, bool) or not isinstance(keep_rows, int) or not 0 <= keep_rows <= grid:
            raise BadRequest(f"keep_rows={keep_rows!r} must be a whole number in 0..{grid} (rows of the "
                             f"{grid}x{grid} code grid kept from the image)")
        if keep_rows and init_image is None:
            raise BadRequest(f"keep_rows={keep_rows} needs an image to complete")
        return keep_rows

    def position(self, job: Job) -> int:
        """0 while the job runs (or is done), else how many jobs wait before it, plus one."""
        with self._cond:
            return self._waiting.index(job) + 1 if job in self._waiting else 0

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    # --- the worker ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as e:  # a failed batch fails its jobs, never the server
                self._finish(batch, [("error", e)] * len(batch))

    def _finish(self, batch: list[Job], events: list[tuple]) -> None:
        """Count the jobs done before telling them, so a job that has its result sees itself counted."""
        with self._cond:
            self._running = []
            self.jobs_done += len(batch)
        for job, event in zip(batch, events):
            job.events.put(event)

    def _next_batch(self) -> Optional[list[Job]]:
        """Wait for a job, then up to `wait` seconds after its arrival for others to merge with it."""
        with self._cond:
            while not self._waiting and not self._stopped:
                self._cond.wait()
            if self._stopped:
                for job in self._waiting:
                    job.events.put(("error", BadRequest("the server is shutting down", status=503)))
                return None
            first = self._waiting[0]
            while not self._stopped:
                batch = self._compatible(first)
                left = first.submitted + self.wait - time.monotonic()
                if left <= 0 or sum(j.images for j in batch) >= self.batch_images:
                    break
                self._cond.wait(timeout=left)
            batch = self._compatible(first)
            self._waiting = [j for j in self._waiting if j not in batch]
            self._running = batch
            return batch

    def _compatible(self, first: Job) -> list[Job]:
        batch, images = [], 0
        for job in self._waiting:
            if job.merge_key() == first.merge_key() and images + job.images <= self.batch_images:
                batch.append(job)
                images += job.images
        return batch

    def _run(self, batch: list[Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        device = self.pipe.device
        generators = [(seeded_generator(job.config.seed, device), job.images) for job in batch]
        keep_rows = batch[0].keep_rows
        images = [job.init_image for job in batch for _ in job.prompts] if keep_rows else None
        every = self.every if any(job.stream for job in batch) else None
        length = self.pipe.model.config.image_length
        self.sampler_calls += 1
        for written, results in self.pipe.stream(prompts, batch[0].config, every=every, generator=generators,
                                                 init_image=images, keep_rows=keep_rows):
            start, shares = 0, []
            for job in batch:  # each job's share, named with its own seed and settings
                shares.append([dataclasses.replace(r, seed=job.config.seed, settings=job.config)
                               for r in results[start:start + len(job.prompts)]])
                start += len(job.prompts)
            if written == length:
                for job, mine in zip(batch, shares):
                    job.results = mine
                self._finish(batch, [("done", mine) for mine in shares])
            else:
                for job, mine in zip(batch, shares):
                    if job.stream:
                        job.events.put(("partial", written, mine))
