"""Issue 18, case by case: every validation pass validates, preemption and kills lose nothing, and bad input
is refused before work starts with a message that names the file or key and the fix. Commands a user types
run as subprocesses; the rest goes through the same entry functions in-process."""

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
from helpers import compose_train
from omegaconf import OmegaConf
from PIL import Image

from dalle_mini_pt.data.encode import run as encode_run
from dalle_mini_pt.data.image_sources import load_image
from dalle_mini_pt.generate import main as generate_main
from dalle_mini_pt.train import build, train
from dalle_mini_pt.training.checkpointing import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def command(module: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600, **kwargs)


def debug(data_dir, out, *overrides):
    return compose_train(["+experiment=debug", f"paths.data_dir={data_dir}", *overrides], output_dir=out)


def losses(run_dir: Path, version: int = 0) -> dict[int, float]:
    rows = csv.DictReader((run_dir / "csv" / f"version_{version}" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


# --- 1. every validation pass validates ----------------------------------------------------------------

class ValidationProbe(pl.Callback):
    passes: list[int] = []  # batches of each validation pass, class-wide: Hydra builds the instance

    def on_validation_epoch_start(self, trainer, pl_module):
        ValidationProbe.passes.append(0)

    def on_validation_batch_end(self, *args, **kwargs):
        ValidationProbe.passes[-1] += 1


@pytest.mark.slow
def test_every_validation_pass_reads_the_whole_set_uninterrupted_and_resumed(data_dir, tmp_path):
    probe = ["+callbacks.probe._target_=test_reliability.ValidationProbe", "trainer.max_steps=60",
             "trainer.val_check_interval=20", "callbacks.model_checkpoint.every_n_train_steps=20"]
    ValidationProbe.passes = []
    train(debug(data_dir, tmp_path / "whole", *probe))
    assert ValidationProbe.passes == [2, 2, 2]  # 32 validation rows in batches of 16, at steps 20, 40 and 60
    val_steps = [int(r["step"]) for r in csv.DictReader((tmp_path / "whole" / "csv" / "version_0" /
                                                          "metrics.csv").open()) if r.get("val/loss")]
    assert val_steps == [19, 39, 59]  # Lightning logs a step-20 validation at step index 19

    ValidationProbe.passes = []
    ckpt = tmp_path / "whole" / "checkpoints" / "step_0000020.ckpt"
    train(debug(data_dir, tmp_path / "resumed", *probe, f"ckpt_path={ckpt}"))
    assert ValidationProbe.passes == [2, 2]  # steps 40 and 60


# --- 2. learning rates that train nothing or go uphill ---------------------------------------------------

@pytest.mark.slow  # a subprocess per run
@pytest.mark.parametrize("lr, says", [("-1", "gradient ascent"), ("0", "leave every weight as it is")])
def test_a_learning_rate_of_zero_or_below_is_refused_before_training(lr, says, data_dir, tmp_path):
    proc = command("dalle_mini_pt.train", "+experiment=debug", f"paths.data_dir={data_dir}",
                   f"hydra.run.dir={tmp_path}", f"optimizer.lr={lr}")
    assert proc.returncode != 0 and f"optimizer.lr={lr}" in proc.stderr and says in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


# --- 3 and 8. generation options and outputs, checked before anything is loaded ---------------------------

@pytest.mark.slow  # a subprocess per run
def test_sampling_options_that_cannot_sample_fail_before_the_model_loads(tmp_path):
    """The pipeline path does not exist: an error about it would mean the options were checked too late."""
    for flag, value in (("--condition-scale", "nan"), ("--condition-scale", "inf"), ("--temperature", "inf")):
        proc = command("dalle_mini_pt.generate", "x", "--pipeline", tmp_path / "absent", flag, value,
                       "--out", tmp_path / "grid.png")
        option = flag[2:].replace("-", "_")
        assert proc.returncode == 2 and f"{option}={float(value)}" in proc.stderr and "finite" in proc.stderr
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("out, scale, says", [
    ("folder", 1, "is a directory"), ("grid", 1, "no suffix is not an image format"),
    ("file.txt/grid.png", 1, "its folder cannot be created"), ("grid.png", 0, "--scale 0 must be >= 1")])
def test_unwritable_outputs_fail_before_sampling(out, scale, says, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_:
        generate_main(["x", "--pipeline", str(tmp_path / "absent"), "--out", str(tmp_path / out),
                       "--scale", str(scale)])
    assert exit_.value.code == 2 and says in capsys.readouterr().err


# --- 4 and 10. shards: null captions, float codes, text that is no text, files that are no parquet ----------

def shard(path: Path, captions, codes, caption_type=pa.string(), code_type=pa.int16()) -> Path:
    pq.write_table(pa.table({"caption": pa.array(captions, caption_type),
                             "encoding": pa.array(codes, pa.list_(code_type))}), path)
    return path


def refused(data_dir, tmp_path, files, match):
    cfg = debug(data_dir, tmp_path / "run", f"data.train_files=[{','.join(map(str, files))}]")
    with pytest.raises(ValueError, match=match):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_shards_with_nulls_floats_or_numbers_for_text_are_refused(data_dir, tmp_path):
    good = data_dir / "tiny" / "train.parquet"
    codes = [[1] * 256] * 20
    nulls = shard(tmp_path / "nulls.parquet", ["a red square"] * 5 + [None] + ["x"] * 14, codes)
    refused(data_dir, tmp_path, [good, nulls], r"nulls\.parquet row 5: the 'caption' is null")
    floats = shard(tmp_path / "floats.parquet", ["x"] * 20, [[1.5] * 256] * 20, code_type=pa.float32())
    refused(data_dir, tmp_path, [good, floats], r"floats\.parquet: column 'encoding' holds list<\w+: float>")
    numbers = shard(tmp_path / "numbers.parquet", list(range(20)), codes, caption_type=pa.int64())
    refused(data_dir, tmp_path, [good, numbers], r"numbers\.parquet: column 'caption' holds int64, not text")


def test_empty_cut_off_and_foreign_files_among_shards_are_named(data_dir, tmp_path):
    good = data_dir / "tiny" / "train.parquet"
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "cut.parquet").write_bytes(good.read_bytes()[:-100])
    (tmp_path / "text.parquet").write_text("caption,encoding\n")
    for name in ("empty", "cut", "text"):
        refused(data_dir, tmp_path, [good, tmp_path / f"{name}.parquet"],
                rf"data\.train_files: .*{name}\.parquet: not a readable parquet file")


def test_a_cut_off_or_foreign_shard_in_the_encoders_output_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "images" / "0.png")
    (tmp_path / "images" / "0.txt").write_text("red\n")
    cfg = OmegaConf.create({"input": {"format": "folder", "path": str(tmp_path / "images"), "passthrough": [],
                                      "image_column": "image_path", "caption_column": "caption"},
                            "output_dir": str(tmp_path / "out"), "vqgan_weights": None, "device": "cpu",
                            "batch_size": 4, "num_workers": 0, "shard_size": 10, "row_group_size": 10,
                            "progress": False,
                            "vqgan": OmegaConf.load(ROOT / "conf" / "vqgan" / "tiny.yaml")})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "00000.parquet").write_bytes(b"PAR1 and then nothing")
    with pytest.warns(UserWarning, match="random"), \
            pytest.raises(ValueError, match=r"00000\.parquet: cut off"):
        encode_run(cfg)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "out" / "00000.parquet")
    with pytest.warns(UserWarning, match="random"), \
            pytest.raises(ValueError, match="not written by this encoder"):
        encode_run(cfg)


# --- 5. images as a viewer shows them ------------------------------------------------------------------

def encoded(image: Image.Image, **save) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, format=save.pop("format", "PNG"), **save)
    return load_image(buf.getvalue(), 32)


def test_16_bit_exif_rotated_and_transparent_images_are_read_as_shown():
    ramp = np.tile(np.linspace(0, 255, 48), (48, 1)).round().astype(np.uint8)
    deep = encoded(Image.fromarray(ramp.astype(np.uint16) * 257))  # a 16-bit greyscale PNG
    assert np.abs(deep.astype(int) - encoded(Image.fromarray(ramp)).astype(int)).max() <= 1

    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :30] = (255, 0, 0)  # red on the left as shown
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": store the picture turned the other way
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    shown = encoded(stored, format="PNG", exif=exif.tobytes())
    assert (shown[:, :10] == (255, 0, 0)).all() and (shown[:, -10:] == 0).all()

    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    transparent.paste((0, 0, 255, 255), (0, 0, 20, 40))
    seen = encoded(transparent)
    assert (seen[:, :12] == (0, 0, 255)).all() and (seen[:, -12:] == 255).all()  # white behind, not black


# --- 6. SIGTERM saves and resumes to the same losses ------------------------------------------------------

@pytest.mark.slow
def test_sigterm_saves_exits_non_zero_and_ckpt_path_last_resumes_to_the_same_losses(data_dir, tmp_path):
    args = ["+experiment=debug", f"paths.data_dir={data_dir}", "trainer.max_steps=50",
            "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=10"]
    whole = tmp_path / "whole"
    assert command("dalle_mini_pt.train", *args, f"hydra.run.dir={whole}").returncode == 0

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dalle_mini_pt.train", *args, f"hydra.run.dir={run}"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step_0000010.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and f"hydra.run.dir={run} ckpt_path=last" in err
    stopped = torch.load(run / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"]
    assert 10 <= stopped < 50

    resumed = command("dalle_mini_pt.train", *args, f"hydra.run.dir={run}", "ckpt_path=last")
    assert resumed.returncode == 0 and "global_step=50" in resumed.stdout, resumed.stderr[-2000:]
    after = losses(run, version=1)
    assert min(after) == stopped and after == {s: v for s, v in losses(whole).items() if s >= stopped}
    assert not (run / "checkpoints" / "preempted.ckpt").exists()  # a finished run leaves no stale one


# --- 7. a kill during the save keeps the last good checkpoint; a broken one is named ----------------------

SAVER = """
import sys, torch
from dalle_mini_pt.training.checkpointing import AtomicCheckpointIO
io, step = AtomicCheckpointIO(), 0
while True:
    io.save_checkpoint({"step": step, "w": torch.full((4_000_000,), float(step))}, sys.argv[1])
    step += 1
    print(step, flush=True)
"""


@pytest.mark.slow  # a subprocess per run
def test_a_kill_during_saving_leaves_an_intact_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=ENV, stdout=subprocess.PIPE,
                             text=True)
    for _ in range(3):  # a few whole saves, then a kill wherever the next one is
        saver.stdout.readline()
    time.sleep(0.03)
    saver.kill()
    saver.wait()
    ckpt = torch.load(path, weights_only=True)
    assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["step"])))
    AtomicCheckpointIO().save_checkpoint({"step": -1}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the killed save's temporary is gone


@pytest.mark.slow  # a subprocess per run
def test_an_empty_checkpoint_is_named_with_the_newest_intact_one(data_dir, tmp_path):
    run = tmp_path / "run"
    train(debug(data_dir, run, "trainer.max_steps=10", "callbacks.model_checkpoint.every_n_train_steps=5"))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    proc = command("dalle_mini_pt.train", "+experiment=debug", f"paths.data_dir={data_dir}",
                   f"hydra.run.dir={tmp_path / 'again'}", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert proc.returncode != 0
    assert "last.ckpt: cannot be read as a checkpoint (0 bytes" in proc.stderr
    assert f"resume with ckpt_path={run / 'checkpoints' / 'step_0000010.ckpt'}" in proc.stderr


# --- 9 and 11. nothing to train, values of the wrong type, a checkpoint of another architecture -------------

def test_runs_that_would_train_nothing_are_refused(data_dir, tmp_path):
    small = shard(tmp_path / "small.parquet", ["a red square"] * 5, [[1] * 256] * 5)
    refused(data_dir, tmp_path, [small], r"5 rows make no batch of data\.batch_size=16 on 1 device")
    none = shard(tmp_path / "none.parquet", [], [])
    refused(data_dir, tmp_path, [none], r"0 rows make no batch")

    run = tmp_path / "done"
    train(debug(data_dir, run, "trainer.max_steps=4", "trainer.val_check_interval=4"))
    cfg = debug(data_dir, tmp_path / "again", "trainer.max_steps=4",
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(ValueError, match=r"is at step 4, and trainer\.max_steps=4: there is nothing left"):
        train(cfg)


def test_values_of_the_wrong_type_and_other_architectures_are_named(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.max_steps='abc' is not a number: it takes int"):
        build(debug(data_dir, tmp_path / "a", "trainer.max_steps=abc"))

    run = tmp_path / "small"
    train(debug(data_dir, run, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    cfg = debug(data_dir, tmp_path / "wide", "model.net.config.d_model=128", "trainer.max_steps=4",
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(ValueError, match=r"another architecture \(d_model: 64 in the checkpoint, 128 in the "
                                         r"config\)"):
        train(cfg)


@pytest.mark.slow  # a subprocess per run
def test_the_encoder_checks_its_weights_before_scanning_the_input(tmp_path):
    proc = command("dalle_mini_pt.data.encode", f"input.path={tmp_path / 'not_scanned_yet'}",
                   f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'logs'}")
    assert proc.returncode != 0 and "vqgan_weights is not set" in proc.stderr
    assert "is not a folder" not in proc.stderr  # the input was not looked at


def test_prompts_that_are_not_strings_are_named(tiny_data):
    from test_hub_mixin import component

    from dalle_mini_pt.pipeline import DalleMiniPipeline
    from dalle_mini_pt.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16)
    pipe = DalleMiniPipeline(component("dallebart"), tokenizer, component("vqgan"))
    with pytest.raises(TypeError, match="prompts must be a string or a list of strings; got NoneType"):
        pipe(None)
    with pytest.raises(TypeError, match="prompts must be strings; got int 3"):
        pipe(["a red square", 3])


# --- issue 26: adapters that cannot learn ------------------------------------------------------------------

@pytest.mark.parametrize("lora, says", [
    ("{r: 2, alpha: 0}", r"model\.lora\.alpha=0: the adapters' output is scaled by alpha/r, so 0 gives "
                         r"them no gradient"),
    ("{r: 0}", r"model\.lora\.r=0: the adapters' rank must be >= 1"),
    ("{r: 2.5}", r"model\.lora\.r=2\.5 is not a whole number"),
    ("{r: 2, alpha: -4}", r"model\.lora\.alpha=-4: .*negative"),
    ("{dropout: 1.0}", r"model\.lora\.dropout=1\.0 must be in \[0, 1\)"),
    ("{targets: []}", r"model\.lora\.targets is empty"),
    ("{targets: [q_proj, fc0]}", r"model\.lora\.targets \['fc0'\] match no layer of this model \(its "
                                 r"projections are \['q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', "
                                 r"'fc2'\]"),
])
def test_adapters_that_cannot_learn_are_refused_with_the_reason(lora, says, data_dir, tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match=says):  # the 2021 architecture: no GLU, so no fc0
        build(debug(data_dir, tmp_path, "model=tiny_2021", f"model.lora={lora}"))


def test_default_adapters_go_on_the_projections_the_model_has(data_dir, tmp_path):
    _, module, _ = build(debug(data_dir, tmp_path, "model=tiny_2021", "model.lora={r: 2}"))
    assert module.lora.targets == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert any("fc1.lora_A" in name for name, _ in module.net.named_parameters())
