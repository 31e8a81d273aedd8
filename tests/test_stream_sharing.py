"""The shard index is read once per run: in a 2-process group (gloo, as torchrun starts it) rank 0 reads the
footers and rank 1 receives its index; the server answers exactly the footer reads of a 1-process run. A
shard rank 0 refuses stops rank 1 with the same message instead of leaving it waiting. (Lightning's DDP
path, the trainer's own broadcast, runs in tests/test_ddp.py.)"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from static_server import StaticServer

from dalle_mini_pt.data.streaming import StreamingDataModule

ROOT = Path(__file__).resolve().parent.parent
RANK = """
import json, sys, torch.distributed as dist
from dalle_mini_pt.data.streaming import StreamingDataModule
rank, address, tokenizer, good, cut, out = sys.argv[1:]
dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=int(rank), world_size=2)
args = dict(tokenizer=tokenizer, text_length=16, image_length=256, codebook_size=32, batch_size=4)
dm = StreamingDataModule(train_files=good, **args)
dm.setup("fit")
result = {"files": dm.train_index.files, "counts": dm.train_index.counts.tolist(), "layout": dm._layout()}
try:
    StreamingDataModule(train_files=[good, cut], **args).setup("fit")
except ValueError as err:
    result["error"] = str(err)
json.dump(result, open(out, "w"))
dist.destroy_process_group()
"""


def shards(root: Path) -> None:
    (root / "train").mkdir(parents=True)
    for f in range(4):
        codes = np.full((50, 256), f, dtype=np.int16)
        pq.write_table(pa.table({"caption": [f"shard {f}"] * 50,
                                 "encoding": pa.array(codes.tolist(), type=pa.list_(pa.int16()))}),
                       root / "train" / f"{f:05d}.parquet", row_group_size=20)
    good = (root / "train" / "00000.parquet").read_bytes()
    (root / "cut.parquet").write_bytes(good[:-100])


def ranged_reads(server: StaticServer) -> int:
    return sum(1 for r in server.reads_of(".parquet") if r.range)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rank_0_reads_the_footers_and_the_other_ranks_receive_the_index(tmp_path, tiny_data):
    shards(tmp_path / "data")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with StaticServer(tmp_path / "data") as server:
        good, cut = server.url("train/*.parquet"), server.url("cut.parquet")
        args = dict(tokenizer=str(tiny_data / "tokenizer"), text_length=16, image_length=256,
                    codebook_size=32, batch_size=4)
        alone = StreamingDataModule(train_files=good, **args)  # the same two set-ups in one process
        alone.setup("fit")
        with pytest.raises(ValueError, match="cut.parquet: not a readable parquet file"):
            StreamingDataModule(train_files=[good, cut], **args).setup("fit")
        one_process = ranged_reads(server)
        server.requests.clear()
        address = f"127.0.0.1:{free_port()}"
        procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), address, str(tiny_data / "tokenizer"),
                                   good, cut, str(tmp_path / f"rank{r}.json")], cwd=ROOT, env=env,
                                  stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
        two_processes = ranged_reads(server)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["layout"], r1["layout"]) == ([0, 2], [1, 2])
    assert r0["files"] == r1["files"] == alone.train_index.files
    assert r0["counts"] == r1["counts"] == alone.train_index.counts.tolist() == [20, 20, 10] * 4
    assert one_process > 0 and two_processes == one_process  # not once per rank
    assert r0["error"] == r1["error"] and "cut.parquet: not a readable parquet file" in r1["error"]


def test_what_rank_0_builds_or_raises_crosses_the_broadcast(tmp_path):
    """The byte protocol over a real (one-rank) gloo group: any length, and an error arrives as itself."""
    import torch.distributed as dist

    from dalle_mini_pt.data.index_sharing import built_once, torch_broadcast

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        for value in ({"files": ["a", "b"], "counts": np.arange(7)}, "x" * 4097, b""):
            got = built_once(lambda: value, 0, torch_broadcast)
            assert type(got) is type(value) and str(got) == str(value)

        def refuse():
            raise ValueError("data.train_files: cut.parquet: not a readable parquet file")

        with pytest.raises(ValueError, match="cut.parquet: not a readable parquet file"):
            built_once(refuse, 0, torch_broadcast)
    finally:
        dist.destroy_process_group()
