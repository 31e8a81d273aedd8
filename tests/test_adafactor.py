import pytest
import torch
from transformers.optimization import Adafactor as HFAdafactor

from dalle_mini_pt.training.adafactor import Adafactor


def _train(optimizer_cls, steps=5, **kwargs):
    """A few steps on a small model that has factored (matrix) and unfactored (bias, zero RMS) parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    torch.nn.init.zeros_(model[0].bias)  # RMS 0 < eps[1]: the clamp branch is used
    opt = optimizer_cls(model.parameters(), **kwargs)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kwargs", [
    # conf/optimizer/adafactor.yaml
    dict(lr=0.005, scale_parameter=True, relative_step=False, warmup_init=False),
    dict(lr=None, scale_parameter=True, relative_step=True, warmup_init=False),
    dict(lr=None, scale_parameter=True, relative_step=True, warmup_init=True),
    dict(lr=0.005, scale_parameter=False, relative_step=False, warmup_init=False),
], ids=["external-lr", "relative-step", "warmup-init", "no-scale"])
def test_same_updates_as_hf_adafactor(kwargs):
    ours, theirs = _train(Adafactor, **kwargs), _train(HFAdafactor, **kwargs)
    start = _train(HFAdafactor, steps=0, **kwargs)
    assert any(not torch.equal(a, b) for a, b in zip(theirs, start))  # the steps moved the parameters
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if i == 1 and kwargs["scale_parameter"]:
            # RMS < eps[1]: HF's scale eps[1] * lr is a Python double, ours a float32 tensor (1-2 ulp apart)
            torch.testing.assert_close(a, b, rtol=2.5e-7, atol=0)
        else:
            assert torch.equal(a, b)


def test_scale_stays_a_tensor():
    group = dict(lr=0.005, relative_step=False, warmup_init=False, scale_parameter=True, eps=(1e-30, 1e-3))
    for rms in (0.0, 0.5):
        lr = Adafactor._get_lr(group, {"step": 1, "RMS": torch.tensor(rms)})
        assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(max(rms, 1e-3) * 0.005)
