"""Issue 26, divergence: a run whose loss or gradient stops being a number stops at once, names the step and
the likely cause, leaves the last finite checkpoint as it was and exits non-zero; options and weights that
are not finite are refused before any step, wherever a config or a checkpoint is read; a sweep records a
diverging trial as failed and goes on."""

import math

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from pytorch_lightning.callbacks import ModelCheckpoint
from test_reliability import command, debug
from torch import nn

from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.eval import evaluate
from dalle_mini_pt.export import main as export_main
from dalle_mini_pt.shapes.stages import run_pipeline, train_spec
from dalle_mini_pt.train import build, train
from dalle_mini_pt.training.divergence import DivergenceGuard, TrainingDiverged, non_finite_tensors

# a finite learning rate 10^33 times too large: the first AdamW update moves every weight by ~1e30, and the
# second step's attention scores overflow float32, so step 2's loss is nan
DIVERGE = ["optimizer=adamw", "optimizer.lr=1e30", "scheduler.warmup_steps=0"]


@pytest.fixture(scope="module")
def diverged(data_dir, tmp_path_factory):
    """`python -m dalle_mini_pt.train` on a diverging learning rate, a checkpoint after every step."""
    run = tmp_path_factory.mktemp("diverged")
    proc = command("dalle_mini_pt.train", "+experiment=debug", f"paths.data_dir={data_dir}",
                   f"hydra.run.dir={run}", *DIVERGE, "trainer.max_steps=3",
                   "callbacks.model_checkpoint.every_n_train_steps=1")
    return run, proc


def test_a_diverging_run_stops_at_the_first_nan_and_keeps_the_last_finite_checkpoint(diverged):
    run, proc = diverged
    last = run / "checkpoints" / "last.ckpt"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "training diverged: the loss of step 2 is nan" in proc.stderr
    assert "the learning rate (1e+30 at this step) is too large" in proc.stderr
    assert f"the newest checkpoint, {last} (step 1), was written before it" in proc.stderr
    assert "trainer.detect_anomaly=true" in proc.stderr and "Traceback" not in proc.stderr
    # step 2's checkpoint was never written, and nothing half-written is left
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step_0000001.ckpt"]
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 1 and non_finite_tensors(ckpt["state_dict"]) == []


def poisoned(ckpt_path, out, names=("net.encoder.embed.embed_tokens.weight", "net.decoder.lm_head.weight")):
    """A copy of a checkpoint with one NaN and one inf in the named tensors: what an unguarded run saved."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    for name, value in zip(names, (math.nan, math.inf)):
        ckpt["state_dict"][name].view(-1)[0] = value
    torch.save(ckpt, out)
    return out


def compose_eval(overrides, output_dir):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def test_nan_weights_are_refused_by_init_from_resume_eval_and_export(diverged, data_dir, tmp_path):
    bad = poisoned(diverged[0] / "checkpoints" / "last.ckpt", tmp_path / "nan.ckpt")
    named = (r"holds inf/NaN weights in 2 tensors: .*embed_tokens\.weight \(1 of \d+ values\), "
             r".*lm_head\.weight")
    with pytest.raises(InstantiationException, match=rf"model\.init_from={bad} {named}"):
        build(debug(data_dir, tmp_path / "init", f"model.init_from={bad}"))
    with pytest.raises(ValueError, match=rf"ckpt_path={bad} {named}"):
        train(debug(data_dir, tmp_path / "resume", f"ckpt_path={bad}", "trainer.max_steps=3"))
    assert not (tmp_path / "resume" / "checkpoints").exists()
    with pytest.raises(ValueError, match=rf"ckpt_path={bad} {named}"):
        evaluate(compose_eval([f"paths.data_dir={data_dir}", f"ckpt_path={bad}"], tmp_path / "eval"))
    with pytest.raises(ValueError, match=rf"{bad} {named}.*Export a checkpoint saved before"):
        export_main([str(bad), str(tmp_path / "model")])
    assert not (tmp_path / "model").exists()


def test_the_generation_callback_samples_nothing_from_a_diverged_run(data_dir, tmp_path):
    """The guard reads its record only every 50 steps here (as on XLA, where it reads at logged steps): the
    callback's look before sampling at step 3 finds step 2's nan instead of sampling from nan logits."""
    cfg = debug(data_dir, tmp_path, *DIVERGE, "trainer.max_steps=5", "callbacks=[divergence,generation]",
                "callbacks.divergence.look_every_n_steps=50", "callbacks.generation.every_n_steps=3",
                "callbacks.generation.num_images=1")
    with pytest.raises(TrainingDiverged, match="the loss of step 2 is nan.*this run wrote no checkpoint"):
        train(cfg)
    assert not list(tmp_path.glob("csv/version_*/samples"))


class Kinked(pl.LightningModule):
    """A real module on a real Trainer: `sqrt` at 0 gives an infinite gradient from a finite loss."""

    def __init__(self, kink: bool):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.kink = nn.Parameter(torch.zeros(2)) if kink else None

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch["x"]).pow(2).mean()
        return loss + self.kink.sqrt().sum() if self.kink is not None else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module, x):
    trainer = pl.Trainer(max_steps=3, callbacks=[DivergenceGuard()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    loader = torch.utils.data.DataLoader([{"x": x}] * 8, batch_size=2)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(module, loader)
    return str(err.value)


class Steep(pl.LightningModule):
    """loss = 10 * sum(w): finite, with a finite gradient of 10, which SGD at lr 1e38 turns into a step of
    1e39, beyond float32's 3.4e38."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        return 10 * (self.w * batch["x"]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e38)


def test_a_checkpoint_of_weights_an_update_overflowed_is_never_written(tmp_path):
    saves = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(max_steps=3, callbacks=[DivergenceGuard(), saves], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    says = r"after step 1 the weights hold inf/NaN in w \(3 of 3 values\), though every loss and gradient"
    with pytest.raises(TrainingDiverged, match=says):
        trainer.fit(Steep(), torch.utils.data.DataLoader([{"x": torch.ones(3)}] * 8, batch_size=2))
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_gradient_or_batch_is_named():
    said = fit(Kinked(kink=True), torch.ones(3))
    assert "the gradients of step 1 hold inf/NaN (largest magnitude inf), in kink (2 of 2 values)" in said
    assert "an operation without a derivative at its input" in said
    said = fit(Kinked(kink=False), torch.tensor([1.0, math.nan, 1.0]))
    assert "the loss of step 1 is nan" in said and "the batch itself holds inf/NaN (in x)" in said


def test_options_that_are_not_finite_are_refused_wherever_a_config_is_read(data_dir, tmp_path):
    proc = command("dalle_mini_pt.train", "+experiment=debug", f"paths.data_dir={data_dir}",
                   f"hydra.run.dir={tmp_path / 'train'}", "optimizer.lr=nan")
    assert proc.returncode != 0 and "optimizer.lr=nan: not a finite number" in proc.stderr
    assert not (tmp_path / "train" / "checkpoints").exists()

    with pytest.raises(ValueError, match=r"trainer\.gradient_clip_val=inf: not a finite number"):
        build(debug(data_dir, tmp_path / "clip", "trainer.gradient_clip_val=inf"))
    with pytest.raises(ValueError, match=r"callbacks\.generation\.condition_scale=nan"):
        build(debug(data_dir, tmp_path / "gen", "callbacks=[generation]",
                    "callbacks.generation.condition_scale=nan"))
    with pytest.raises(ValueError, match=r"trainer\.gradient_clip_val=-inf: not a finite number"):
        evaluate(compose_eval([f"paths.data_dir={data_dir}", "trainer.gradient_clip_val=-inf"], tmp_path))
    with pytest.raises(ValueError, match=r"the stage \+experiment=shapes_vqgan optimizer\.lr=nan: optimizer"):
        train_spec(["+experiment=shapes_vqgan", "optimizer.lr=nan"])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        pipeline = compose("shapes_smoke", overrides=[f"out_dir={tmp_path / 'shapes'}",
                                                      "evaluate.condition_scale=inf"])
    with pytest.raises(ValueError, match=r"evaluate\.condition_scale=inf: not a finite number"):
        run_pipeline(pipeline)
    assert not (tmp_path / "shapes").exists()


def sweep(data_dir, out, lrs: str):
    """The learning-rate search of conf/hparams_search, over `lrs`, for 2 trials of 3 steps."""
    return command("dalle_mini_pt.train", "-m", "+experiment=debug", "hparams_search=lr_optuna",
                   f"paths.data_dir={data_dir}", "optimizer=adamw",
                   f"hydra.sweeper.params={{optimizer.lr:'choice({lrs})',scheduler.warmup_steps:'choice(0)'}}",
                   "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=10", "trainer.max_steps=3",
                   "trainer.val_check_interval=3", "+trainer.limit_val_batches=1", f"hydra.sweep.dir={out}")


@pytest.mark.slow  # a two-trial sweep in a subprocess
def test_a_sweep_records_a_diverging_trial_as_failed_and_goes_on(data_dir, tmp_path):
    proc = sweep(data_dir, tmp_path, "1e30,0.001")  # the sampler's seed draws 1e30 first, then 0.001
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Failed experiment: training diverged: the loss of step 2 is nan" in proc.stdout + proc.stderr
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "optimizer.lr: 0.001" in results and "best_value: 2." in results


@pytest.mark.slow
def test_a_sweep_in_which_every_trial_diverges_fails(data_dir, tmp_path):
    proc = sweep(data_dir, tmp_path, "1e30")
    assert proc.returncode != 0 and "No trials are completed yet" in proc.stdout + proc.stderr
    assert not (tmp_path / "optimization_results.yaml").exists()


@pytest.mark.slow
def test_a_diverging_ddp_run_stops_at_the_first_nan(data_dir, tmp_path):
    """Two CPU ranks: each look gathers both records, so the ranks decide alike at the same step."""
    proc = command("dalle_mini_pt.train", "+experiment=debug", "trainer=ddp", "trainer.accelerator=cpu",
                   "trainer.devices=2", "trainer.precision=32-true", f"paths.data_dir={data_dir}",
                   f"hydra.run.dir={tmp_path}", *DIVERGE, "trainer.max_steps=4",
                   "callbacks.model_checkpoint.every_n_train_steps=1")
    assert proc.returncode == 1
    # rank 0 ends rank 1's process as it stops, which may cut rank 1's own message short
    assert "training diverged: the loss of step 2 is nan" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step_0000001.ckpt"]
