"""The divergence guard on torch-xla's CPU device (PJRT_DEVICE=CPU): it reads its device-side record only at
the steps Lightning logs, so a diverging run stops at the first logged step after the bad one, names the bad
one, and every step stays one graph (no host sync inside a step).

Needs torch-xla: `bash scripts/xla_env.sh && bash scripts/run_xla_tests.sh`; skipped elsewhere."""

import pytest

pytest.importorskip("torch_xla",
                    reason="torch_xla is not installed (bash scripts/xla_env.sh builds .venv-xla)")

from helpers import compose_train  # noqa: E402
from test_xla import PhaseProbe, graph_runs, xla_cpu_device  # noqa: E402,F401  (the fixture, by name)

from dalle_mini_pt.train import build  # noqa: E402
from dalle_mini_pt.training.divergence import TrainingDiverged  # noqa: E402


@pytest.mark.slow
@pytest.mark.usefixtures("xla_cpu_device")
def test_a_diverging_run_stops_at_the_next_logged_step_without_extra_graphs(data_dir, tmp_path):
    cfg = compose_train([
        "+experiment=debug", "trainer=tpu", "trainer.devices=1", f"paths.data_dir={data_dir}",
        "optimizer=adamw", "optimizer.lr=1e30", "scheduler.warmup_steps=0", "trainer.max_steps=8",
        "trainer.log_every_n_steps=4", "+trainer.enable_progress_bar=false", "callbacks=none", "logger=csv",
    ], output_dir=tmp_path)
    datamodule, module, trainer = build(cfg)
    probe = PhaseProbe()
    trainer.callbacks.append(probe)
    with pytest.raises(TrainingDiverged, match="the loss of step 2 is nan"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4  # read at the first logged step after it, not at every step
    # one graph per step, the fourth included: its step graph, and the read that raised was a copy
    assert [r for _, r, _ in probe.steps["train"]] + [graph_runs() - probe._r] == [1, 1, 1, 1]
