"""The TPU path on torch-xla's CPU device (PJRT_DEVICE=CPU): the tiny model trains through the same
LightningModule and Trainer config (`trainer=tpu`, one device), validates and samples a full image, and after
the first steps of each phase nothing compiles again (static shapes) and each step runs as one graph (no host
syncs inside the step).

Needs torch-xla: `bash scripts/xla_env.sh && bash scripts/run_xla_tests.sh`; skipped elsewhere."""

import time

import pytest

pytest.importorskip("torch_xla",
                    reason="torch_xla is not installed (bash scripts/xla_env.sh builds .venv-xla)")

import pytorch_lightning as pl  # noqa: E402
import torch_xla  # noqa: E402
import torch_xla._internal.tpu as xla_tpu  # noqa: E402
import torch_xla.core.xla_model as xm  # noqa: E402
import torch_xla.debug.metrics as met  # noqa: E402
from helpers import compose_train  # noqa: E402
from pytorch_lightning.accelerators import XLAAccelerator  # noqa: E402

from dalle_mini_pt.tokenizer import TextTokenizer  # noqa: E402
from dalle_mini_pt.train import build  # noqa: E402
from dalle_mini_pt.training.adafactor import Adafactor  # noqa: E402

# Steps of each phase allowed to compile. Train: the first step, the second (optimizer state now exists),
# and the first step after each of the first two validation runs / the first epoch boundary (Lightning's
# loops hand the step new metric and state tensors once); 19 more steps, over two more validation runs and
# three epoch boundaries, must compile nothing. Validation: its first batch and its epoch-end reduction.
WARMUP = {"train": 9, "val": 2}


@pytest.fixture
def xla_cpu_device(monkeypatch):
    """Lightning counts TPUs through the TPU VM's metadata server; on PJRT CPU there is one device."""
    monkeypatch.setattr(xla_tpu, "num_available_devices", lambda: 1)
    XLAAccelerator.auto_device_count.cache_clear()
    XLAAccelerator.is_available.cache_clear()
    yield
    XLAAccelerator.auto_device_count.cache_clear()
    XLAAccelerator.is_available.cache_clear()


def compiles() -> int:
    data = met.metric_data("CompileTime")
    return data[0] if data else 0


def graph_runs() -> int:
    """Graphs executed so far: one per step when nothing in it asks the host for a value."""
    data = met.metric_data("ExecuteTime")
    return data[0] if data else 0


class PhaseProbe(pl.Callback):
    """Compiles, graph runs and wall time around every train and validation batch."""

    def __init__(self):
        self.steps = {"train": [], "val": []}

    def _start(self):
        self._t, self._c, self._r = time.perf_counter(), compiles(), graph_runs()

    def _end(self, phase):
        torch_xla.sync()
        xm.wait_device_ops()
        self.steps[phase].append((compiles() - self._c, graph_runs() - self._r,
                                  time.perf_counter() - self._t))

    def on_train_batch_start(self, *args):
        self._start()

    def on_train_batch_end(self, *args):
        self._end("train")

    def on_validation_batch_start(self, *args):
        self._start()

    def on_validation_batch_end(self, *args):
        self._end("val")


def report(phase: str, steps: list[tuple[int, int, float]]) -> tuple[int, int]:
    warm, after = steps[:WARMUP[phase]], steps[WARMUP[phase]:]
    new = sum(c for c, _, _ in after)
    ms = 1000 * sum(t for _, _, t in after) / max(len(after), 1)
    print(f"  {phase:<10} {len(steps):>4} steps  compiles in warm-up {sum(c for c, _, _ in warm):>3}  "
          f"after warm-up {new:>3}  step time after warm-up {ms:8.1f} ms  "
          f"(first step {1000 * steps[0][2]:.0f} ms)")
    print(f"  {'':<10} compiles per step: {[c for c, _, _ in steps]}")
    print(f"  {'':<10} graph runs per step: {[r for _, r, _ in steps]}")
    return new, len(after)


@pytest.mark.slow
def test_tiny_model_trains_validates_and_samples_without_recompiling(xla_cpu_device, data_dir, tmp_path,
                                                                     capsys):
    cfg = compose_train([
        "+experiment=debug", "trainer=tpu", "trainer.devices=1", f"paths.data_dir={data_dir}",
        "trainer.max_steps=28", "trainer.val_check_interval=4", "+trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=4", "+trainer.enable_progress_bar=false", "callbacks=none", "logger=csv",
        "scheduler.warmup_steps=2",
    ], output_dir=tmp_path)
    datamodule, module, trainer = build(cfg)
    assert type(trainer.strategy).__name__ == "SingleDeviceXLAStrategy"
    assert trainer.strategy.root_device.type == "xla"
    probe = PhaseProbe()
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 28
    # its RMS scale stays on the device: no sync per parameter
    assert type(trainer.optimizers[0]) is Adafactor

    # a full 256-code generation with super-conditioning, as the generation callback samples
    device = torch_xla.device()
    net = module.net.to(device).eval()
    tokenizer = TextTokenizer.from_pretrained(str(data_dir / "tiny" / "tokenizer"),
                                              net.config.max_text_length)
    prompts = {k: v.to(device) for k, v in tokenizer(["a red square on the left", "a blue circle"]).items()}
    uncond = {k: v.to(device) for k, v in tokenizer.unconditional().items()}
    generations = []
    for seed in range(4):  # the seed changes only the CPU-drawn noise: no new graph
        t, c = time.perf_counter(), compiles()
        codes = net.generate(**prompts, **uncond, num_images=2, condition_scale=3.0, top_k=16, seed=seed)
        codes = codes.cpu()
        generations.append((compiles() - c, time.perf_counter() - t))
        assert codes.shape == (4, net.config.image_length) and int(codes.max()) < net.config.codebook_size

    with capsys.disabled():
        print(f"\nXLA CPU device ({xm.xla_device_hw(device)}), precision {cfg.trainer.precision}, "
              f"{compiles()} compiles in all; warm-up steps {WARMUP}, generation: first call")
        train_new, train_n = report("train", probe.steps["train"])
        val_new, val_n = report("val", probe.steps["val"])
        gen_new = sum(c for c, _ in generations[1:])
        print(f"  {'generate':<10} {len(generations):>4} calls  compiles in first call "
              f"{generations[0][0]:>3}  after {gen_new:>3}  time per call after "
              f"{1000 * sum(t for _, t in generations[1:]) / 3:8.1f} ms "
              f"(256 steps; first call {1000 * generations[0][1]:.0f} ms)")
    assert train_n >= 19 and val_n >= 6
    assert (train_new, val_new, gen_new) == (0, 0, 0), met.short_metrics_report()
    # a host sync cuts the step into several graphs: HF's Adafactor (a sync per parameter) gives 74 here
    assert {r for _, r, _ in probe.steps["train"] + probe.steps["val"]} == {1}
