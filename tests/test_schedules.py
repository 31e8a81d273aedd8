import pytest
import torch

from dalle_mini_pt.training.optimization import lr_factor, warmup_schedule


def test_warmup_then_each_decay():
    f = lambda step, decay, **kw: lr_factor(step, warmup_steps=4, total_steps=25, decay=decay, **kw)  # noqa: E731
    assert [f(s, "constant") for s in range(6)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # optax: over warmup + 1
    assert f(5, "linear") == 1.0 and f(15, "linear") == pytest.approx(0.5) and f(25, "linear") == 0.0
    assert f(15, "cosine") == pytest.approx(0.5) and f(25, "cosine") == pytest.approx(0.0)
    assert f(5 + 1000, "exponential", decay_rate=0.5, transition_steps=1000) == pytest.approx(0.5)
    assert f(5 + 1500, "exponential", decay_rate=0.5, transition_steps=1000, staircase=True) == 0.5
    assert lr_factor(0, warmup_steps=0, total_steps=10) == 1.0


def test_schedule_drives_the_optimizer_and_refuses_bad_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_schedule(opt, total_steps=10, warmup_steps=1, decay="linear")
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 2.0 * 7 / 8])
    with pytest.raises(ValueError, match="needs a known run length"):
        warmup_schedule(opt, total_steps=float("inf"), decay="cosine")
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_schedule(opt, total_steps=10, warmup_steps=-1)
