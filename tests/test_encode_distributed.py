"""Encoding on several processes (DDP on CPU with gloo, launched as training is): the shards of a 2-process
run are those of a 1-process run, code for code and key for key; a rank killed mid-run, then the same
command (2 processes from Lightning's launcher, tars over HTTP), gives the shards of an uninterrupted
1-process run, and the rerun reads only what was not written."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
from file_server import FileServer
from test_encode import ROOT, encode_cfg, module_fixtures, tiny_vqgan

from dalle_mini_pt.data.encode import encode_dataset, run
from dalle_mini_pt.data.tar_source import TarSource

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SETTINGS = ["vqgan=tiny", "vqgan_weights=null", "num_workers=1", "batch_size=2", "progress=false"]


images = module_fixtures()[1]


def encode_command(*args) -> list[str]:
    return [sys.executable, "-m", "dalle_mini_pt.data.encode", *SETTINGS, *args]


def two_ranks(tmp_path: Path, name: str) -> list[str]:
    # rank 1 is started by Lightning with this argv: the same hydra.run.dir
    return ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path / name}"]


def same_shards(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.parquet"))
    assert names == sorted(p.name for p in b.glob("*.parquet")) and names
    for name in names:
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.equals(tb) and ta.schema.metadata == tb.schema.metadata, name
    assert (a / "report.json").read_text() == (b / "report.json").read_text()


class PieceProbe(pl.Callback):
    """Each rank writes which pieces it encoded to out_dir/rank{r}.json."""

    def __init__(self, out_dir: str):
        self.out_dir, self.pieces = Path(out_dir), set()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.pieces.add(batch["piece"])

    def on_predict_end(self, trainer, pl_module):
        self.out_dir.mkdir(exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"world_size": trainer.world_size, "pieces": sorted(self.pieces)}))


def test_two_ddp_processes_write_exactly_the_shards_of_one(images, tmp_path):
    """Two gloo ranks forked from this process (strategy ddp_fork: no second start-up of Python); the
    command-line launcher's run is the slow test below."""
    def encode(name, *trainer):
        cfg = encode_cfg(f"input.path={images}", f"output_dir={tmp_path / name}", "shard_size=3",
                         "trainer.accelerator=cpu", *trainer, *SETTINGS)
        with pytest.warns(UserWarning, match="random"):
            return run(cfg)

    one = encode("one")
    probe = ("+trainer.callbacks=[{_target_: test_encode_distributed.PieceProbe, out_dir: "
             f"{tmp_path / 'ranks'}}}]")
    two = encode("two", "trainer=ddp", "trainer.strategy=ddp_fork", "trainer.devices=2", probe)
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"world_size": 2, "pieces": [0, 2, 4, 6]}, {"world_size": 2, "pieces": [1, 3, 5]}]
    assert one == two and one["shards"] == [f"{s:05d}.parquet" for s in range(7)]
    same_shards(tmp_path / "one", tmp_path / "two")


def write_tars(images: Path, out: Path) -> None:
    out.mkdir()
    files = sorted(p for p in images.rglob("*") if p.is_file())
    for t in range(4):  # 5 items per tar: 0-4, 5-9, 10-14, 15-18
        with tarfile.open(out / f"{t:05d}.tar", "w") as tf:
            for p in files:
                if 5 * t <= int(p.stem) < 5 * (t + 1):
                    tf.add(p, arcname=p.name)


def wait_for(condition, what: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.1)


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            ours = "dalle_mini_pt.data.encode" in child.cmdline()
            if ours and child.environ().get("LOCAL_RANK") == str(rank):
                return child
        except psutil.NoSuchProcess:
            continue
    raise LookupError(f"no rank {rank} process under {launcher.pid}")


@pytest.mark.slow
def test_a_rank_killed_mid_run_then_the_same_command_equals_an_uninterrupted_run(images, tmp_path):
    """Ranks take pending tars in turn: rank 0 tars 0 and 2, rank 1 tars 1 and 3. The file server stops
    sending tar 3 before its last sample, so rank 1 is killed after writing shard 1, half-way through tar 3.
    (Lightning's loop looks one batch ahead: shard 1's last batch is written once tar 3's first is in.)"""
    write_tars(images, tmp_path / "tars")
    out = tmp_path / "out"
    with tarfile.open(tmp_path / "tars" / "00003.tar") as tf:
        last_sample = tf.getmembers()[-3].offset  # its .jpg, .json, .txt are the last three members
    with FileServer(tmp_path / "tars") as server:
        pattern = f"input.path='{server.url}/{{00000..00003}}.tar'"
        command = encode_command("input.format=tar", pattern, f"output_dir={out}",
                                 *two_ranks(tmp_path, "logs"))
        server.hold("00003.tar", after=last_sample)
        log = tmp_path / "killed.log"
        with log.open("w") as f:  # a file, not a pipe: an orphaned reader must not keep the test waiting
            launcher = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        started = []
        try:
            wait_for(lambda: "00003.tar" in server.waiting and len(list(out.glob("*.parquet"))) == 3,
                     "shards 0-2 written and rank 1 half-way through tar 3")
            started = psutil.Process(launcher.pid).children(recursive=True)
            rank_process(launcher, 1).send_signal(signal.SIGKILL)
            launcher.wait(timeout=120)  # Lightning's launcher sees rank 1 die and ends the run
        finally:
            launcher.kill()
            server.release("00003.tar")
            for p in started:  # the killed rank's DataLoader worker, blocked in its read until now
                if p.is_running():
                    p.kill()
        assert launcher.returncode != 0, log.read_text()[-3000:]
        assert "terminated with code -9" in log.read_text()
        assert sorted(p.name for p in out.glob("*.parquet")) == ["00000.parquet", "00001.parquet",
                                                                "00002.parquet"]
        stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
        reads_before = len(server.requests)
        rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
        assert {n for m, n in server.requests[reads_before:] if m == "GET"} == {"00003.tar"}
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet") if p.name in stamps} == stamps
        source = TarSource(f"{server.url}/{{00000..00003}}.tar")
        encode_dataset(source, tiny_vqgan(), tmp_path / "whole", batch_size=2, num_workers=1, progress=False)
    same_shards(out, tmp_path / "whole")


@pytest.mark.slow
def test_the_speed_benchmark_runs_the_tool_on_one_and_two_processes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("encode_speed", ROOT / "benchmarks" / "encode_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--vqgan", "tiny", "--images", "32", "--size", "40", "--batch-size", "4",
                 "--num-workers", "2", "--processes", "1", "2", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| encoder tool, 2 processes (batch 4 each, 2 workers in all) |" in out
    assert "2 processes: " in out and "x one process (goal >= 1.8x)" in out
    same_shards(tmp_path / "shards", tmp_path / "shards2")
