"""The batcher on its own (no web server): requests queued together run as one sampler call, each with
the images its seed gives alone; requests with other options wait for their own call; bad ones are
refused with the reason before they queue; the queue is bounded, late requests are withdrawn, a failing
batch re-runs its members alone, draining finishes the running batch and answers the rest, and clients
that send again as soon as they are answered merge into full batches instead of taking turns."""

import asyncio
import threading
import time

import pytest
import torch
from test_pipeline import pipe  # noqa: F401  (the module-scoped tiny pipeline fixture)

from dalle_mini_pt.app.jobs import (
    BadRequest,
    Batcher,
    GenerationFailed,
    QueueFull,
    ShuttingDown,
    WaitedTooLong,
)
from dalle_mini_pt.app.settings import ServerSettings
from dalle_mini_pt.pipeline import DalleMiniPipeline


@pytest.fixture
def batcher(pipe):  # noqa: F811
    b = Batcher(pipe, ServerSettings(batch_images=8, wait=1.0))
    yield b
    b.close()


def test_jobs_queued_together_share_one_call_and_keep_their_seeds(pipe, batcher):  # noqa: F811
    jobs = [batcher.submit(["a red square"], {"num_images": 2, "top_k": 8, "seed": 1}),
            batcher.submit(["a blue circle", "a cross"], {"num_images": 2, "top_k": 8, "seed": 2}),
            batcher.submit(["a red square"], {"num_images": 2, "top_k": 4, "seed": 1})]  # other options
    assert [batcher.position(j) for j in jobs] == [1, 2, 3]
    results = [j.result(timeout=300) for j in jobs]
    assert batcher.sampler_calls == 2 and batcher.jobs_done == 3
    for job, got in zip(jobs, results):
        alone = pipe(job.prompts, num_images=2, top_k=job.config.top_k, seed=job.config.seed)
        assert [r.prompt for r in got] == job.prompts and all(r.seed == job.config.seed for r in got)
        assert all(torch.equal(a.codes, b.codes) and a.scores == b.scores for a, b in zip(got, alone))
    assert not torch.equal(results[0][0].codes, results[2][0].codes)


def test_a_streaming_job_gets_partials_then_the_result(batcher):
    job = batcher.submit("a green cross", {"num_images": 1, "seed": 3}, stream=True)
    events = []
    while not events or events[-1][0] != "done":
        events.append(job.next_event(timeout=300))
    assert [e[1] for e in events[:-1]] == list(range(16, 256, 16)) and events[-1][1][0].seed == 3


def test_bad_requests_are_refused_before_they_queue(batcher):
    for prompts, options, kw, match in [([], {}, {}, "no prompts"), ([3], {}, {}, "strings"),
                                        (["a"], {"top_p": 2}, {}, "top_p"),
                                        (["a"], {"num_images": 9}, {}, "at most 8"),
                                        (["a"], {}, {"keep_rows": 99}, "keep_rows=99"),
                                        (["a"], {}, {"keep_rows": 2}, "needs an image")]:
        with pytest.raises(BadRequest, match=match):
            batcher.submit(prompts, options, **kw)
    assert batcher.waiting == 0


def test_a_bad_request_never_joins_the_good_ones_waiting(batcher):
    """Issue case 2: a seed of 2**64 or a lone surrogate, sent while three good requests wait, used to fail
    all four when their batch ran; now it is refused alone, before it queues."""
    good = [batcher.submit([f"a red square {i}"], {"num_images": 2, "seed": i}) for i in range(3)]
    for prompts, options, match in [(["a"], {"seed": 2**64}, "seed"), (["a"], {"seed": -2**63 - 1}, "seed"),
                                    (["a \ud800"], {"seed": 1}, "lone surrogate"),
                                    (["a"], {"temperature": 1e300}, "temperature"),
                                    (["a"], {"condition_scale": 1e38}, "condition_scale"),
                                    (["a"], {"step_mode": "cuda_graph"}, "CUDA")]:
        with pytest.raises(BadRequest, match=match):
            batcher.submit(prompts, options)
    assert [len(j.result(timeout=300)) for j in good] == [1, 1, 1] and batcher.sampler_calls == 1


class FailsOnBoom(DalleMiniPipeline):
    """The tiny pipeline with an injected fault: sampling any batch holding the prompt "boom" raises, as a
    device error would. No checkable input fails inside a batch any more, so the rerun path needs one."""

    def stream(self, prompts, *args, **kwargs):
        if "boom" in prompts:
            raise RuntimeError("the device failed on this batch")
        return super().stream(prompts, *args, **kwargs)


def test_a_failing_batch_reruns_its_members_alone(pipe):  # noqa: F811
    flaky = FailsOnBoom(pipe.model, pipe.tokenizer, pipe.vqgan, pipe.clip, pipe.normalizer)
    b = Batcher(flaky, ServerSettings(batch_images=8, wait=1.0))
    try:
        jobs = [b.submit([p], {"num_images": 1, "seed": 5}) for p in ("a red square", "boom", "a cross")]
        assert len(jobs[0].result(timeout=300)) == 1 and len(jobs[2].result(timeout=300)) == 1
        with pytest.raises(GenerationFailed, match="the device failed"):
            jobs[1].result(timeout=300)
        assert b.sampler_calls == 4  # the merged call, then each member alone
    finally:
        b.close()


def test_the_queue_is_bounded_and_a_late_request_is_withdrawn(pipe):  # noqa: F811
    b = Batcher(pipe, ServerSettings(batch_images=8, wait=30.0, max_queue=2, timeout=0.3))
    try:
        first, second = (b.submit(["a red square"], {"num_images": 1}) for _ in range(2))
        with pytest.raises(QueueFull, match="--max-queue") as full:
            b.submit(["one too many"], {"num_images": 1})
        assert full.value.retry_after >= 1
        start = time.monotonic()
        with pytest.raises(WaitedTooLong, match="--timeout"):
            asyncio.run(b.outcome(first))  # still in the 30 s merge window: it never started
        assert time.monotonic() - start < 10 and b.waiting == 1
    finally:
        b.drain()
    with pytest.raises(ShuttingDown):
        second.result(timeout=5)


def test_draining_finishes_the_running_batch_and_answers_the_waiting(pipe):  # noqa: F811
    b = Batcher(pipe, ServerSettings(batch_images=2, wait=0.0))
    running = b.submit(["a red square"], {"num_images": 2, "seed": 1})
    waiting = b.submit(["a blue circle"], {"num_images": 2, "seed": 2})
    deadline = time.monotonic() + 60
    while not b.running and time.monotonic() < deadline:
        time.sleep(0.01)
    b.drain()
    assert len(running.result(timeout=1)[0].images) == 2
    with pytest.raises(ShuttingDown, match="had not started"):
        waiting.result(timeout=1)
    with pytest.raises(ShuttingDown):
        b.submit(["after"], {"num_images": 1})


def test_clients_that_send_again_when_answered_merge_into_full_batches(pipe):  # noqa: F811
    """Two clients start, two more join while the first batch runs; each sends four requests, the next
    50 ms (a round trip) after the last is answered. A merge window counted from a request's arrival made
    them take turns in pairs (eight calls: the pair that waited through a batch started at once, its
    window long gone, without the pair just answered); the window that opens when the device frees merges
    all four from the second batch on (five calls)."""
    b = Batcher(pipe, ServerSettings(batch_images=16, wait=0.5))

    def client(i: int) -> None:
        for r in range(4):
            time.sleep(0.05 if r else 0)
            b.submit([f"a red square {i}"], {"num_images": 2, "seed": 10 * i + r}).result(timeout=300)

    pairs = [[threading.Thread(target=client, args=(i,)) for i in ids] for ids in ((0, 1), (2, 3))]
    try:
        for t in pairs[0]:
            t.start()
        deadline = time.monotonic() + 60
        while not b.running and time.monotonic() < deadline:
            time.sleep(0.005)
        for t in pairs[1]:
            t.start()
        for t in pairs[0] + pairs[1]:
            t.join(timeout=300)
        assert b.jobs_done == 16 and b.sampler_calls <= 5, b.sampler_calls
    finally:
        b.close()


def test_the_batch_window_opens_when_the_device_frees_and_closes_at_the_demand_it_saw():
    from dalle_mini_pt.app.batch_window import BatchWindow

    window = BatchWindow(wait=0.5, batch_images=16)
    assert window.left(first_arrived=10.0, images=4, now=10.1) == pytest.approx(0.4)  # no batch yet
    assert window.left(first_arrived=10.0, images=16, now=10.1) == 0  # a full batch starts at once
    window.batch_ended(jobs=4, images=8, now=20.0)  # 2 ran, 2 waited through it: 4 clients
    # a request that waited through the batch still waits, from the batch's end, for the 4 clients' 8
    assert window.left(first_arrived=19.0, images=4, now=20.1) == pytest.approx(0.4)
    assert window.left(first_arrived=19.0, images=8, now=20.1) == 0
    window.batch_ended(jobs=1, images=2, now=30.0)  # a lone client: the whole window, others may come
    assert window.left(first_arrived=30.2, images=2, now=30.2) == pytest.approx(0.5)
