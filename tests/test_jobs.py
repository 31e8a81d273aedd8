"""The batcher on its own (no web server): requests queued together run as one sampler call, each with
the images its seed gives alone; requests with other options wait for their own call; bad ones are
refused with the reason before they queue."""

import pytest
import torch
from test_pipeline import pipe  # noqa: F401  (the module-scoped tiny pipeline fixture)

from dalle_mini_pt.app.jobs import BadRequest, Batcher


@pytest.fixture
def batcher(pipe):  # noqa: F811
    b = Batcher(pipe, batch_images=8, wait=1.0)
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
