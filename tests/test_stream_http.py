"""Shards over a real transport: encoded parquet served by a loopback HTTP server and read through fsspec's
HTTP filesystem, into the stream and into training. The shard the reference's encoding notebook writes
(pandas `to_parquet` of `caption` and `encoding` lists: one row group) trains with no step in between."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import compose_train
from static_server import StaticServer

from dalle_mini_pt.data import stream_plan
from dalle_mini_pt.data.row_reader import SLICE_ROWS, RowReader
from dalle_mini_pt.data.shard_index import RowFilter, ShardIndex
from dalle_mini_pt.data.shards import REMOTE_CACHE
from dalle_mini_pt.data.stream_spec import StreamSpec
from dalle_mini_pt.data.streaming import StreamingDataModule
from dalle_mini_pt.train import train

V, L = 32, 256


def numbered(start: int, stop: int) -> pa.Table:
    """Rows whose first three codes spell their id (base V)."""
    ids = np.arange(start, stop)
    codes = np.zeros((len(ids), L), dtype=np.int16)
    codes[:, 0], rest = np.divmod(ids, V * V)
    codes[:, 1], codes[:, 2] = np.divmod(rest, V)
    return pa.table({"caption": [f"a red square {i}" for i in ids],
                     "encoding": pa.array(codes.tolist(), type=pa.list_(pa.int16()))})


def ids(batch) -> list[int]:
    return ((batch["labels"][:, 0] * V + batch["labels"][:, 1]) * V + batch["labels"][:, 2]).tolist()


def epoch(dm) -> list[int]:
    return [i for b in dm.train_dataloader() for i in ids(b)]


def test_shards_stream_over_http_as_from_disk(tmp_path, tiny_data):
    """A glob over the server's directory listing; two ranks by two workers (forked: each worker opens its
    own connections); the same rows as from disk, fetched by Range requests."""
    (tmp_path / "train").mkdir()
    pq.write_table(numbered(0, 2500), tmp_path / "train" / "00000.parquet")  # one row group, 3 slices
    pq.write_table(numbered(2500, 2600), tmp_path / "train" / "00001.parquet", row_group_size=30)
    args = dict(tokenizer=str(tiny_data / "tokenizer"), text_length=16, image_length=L, codebook_size=V,
                batch_size=16, shuffle_buffer=200, seed=1, num_workers=2, world_size=2)
    with StaticServer(tmp_path) as server:
        remote = [StreamingDataModule(train_files=server.url("train/*.parquet"), rank=r, **args)
                  for r in (0, 1)]
        assert remote[0].train_files == [server.url(f"train/0000{i}.parquet") for i in (0, 1)]
        over_http = [epoch(dm) for dm in remote]
    from_disk = [epoch(StreamingDataModule(train_files=str(tmp_path / "train"), rank=r, **args))
                 for r in (0, 1)]
    assert over_http == from_disk
    union = over_http[0] + over_http[1]
    assert len(union) == len(set(union)) == 2 * 81 * 16 and set(union) <= set(range(2600))  # 1300 rows a rank
    reads = server.reads_of(".parquet")
    assert reads and all(r.range and r.range.startswith("bytes=") and r.status in (200, 206) for r in reads)


def test_a_row_group_streams_over_http_in_blocks_each_fetched_once(tmp_path):
    """Several MiB in one row group, read slice by slice: each byte of the file is requested about once,
    in requests no larger than a cache block."""
    rows, codebook = 16 * SLICE_ROWS, 16384
    codes = np.random.default_rng(0).integers(0, codebook, size=rows * L, dtype=np.int64)
    table = pa.table({"caption": [f"row {i}" for i in range(rows)], "encoding": pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * L + 1, L, dtype=np.int32)), pa.array(codes))})
    pq.write_table(table, tmp_path / "big.parquet")
    size, block = (tmp_path / "big.parquet").stat().st_size, REMOTE_CACHE["block_size"]
    assert size > 3 * block
    spec = StreamSpec(image_length=L, codebook_size=codebook, batch_size=64, shuffle=False)
    with StaticServer(tmp_path) as server:
        index = ShardIndex.build([server.url("big.parquet")], "data.train_files", spec, RowFilter())
        server.requests.clear()
        plan = stream_plan.worker_plan(index.counts, spec, epoch=0, worker=0)
        reader = RowReader(index, plan.segments, np.ones(rows, dtype=bool), spec)
        got = np.stack([reader.take(int(p))[1] for p in plan.order])
    assert np.array_equal(got, codes.reshape(rows, L))
    spans = [[int(x) for x in r.range.split("=")[1].split("-")] for r in server.reads_of("big.parquet")]
    assert all(b - a + 1 <= block for a, b in spans)
    assert sum(b - a + 1 for a, b in spans) <= size + 2 * block


def notebook_shard(path, rows: int, seed: int = 0) -> None:
    """What the reference's tools/dataset/encode_dataset.ipynb writes: a pandas frame of captions and lists
    of Python ints (codes of `encoded.tolist()`), saved with pandas' defaults."""
    codes = np.random.default_rng(seed).integers(0, V, size=(rows, L))
    frame = pd.DataFrame.from_dict({"caption": [f"a blue circle number {i}" for i in range(rows)],
                                    "encoding": codes.tolist()})
    frame.to_parquet(path)


@pytest.mark.slow
def test_a_reference_notebook_shard_trains_over_http(tmp_path, tiny_data):
    (tmp_path / "encoded").mkdir()
    notebook_shard(tmp_path / "encoded" / "001.parquet", rows=SLICE_ROWS + 700)
    notebook_shard(tmp_path / "encoded" / "002.parquet", rows=64, seed=1)
    meta = pq.ParquetFile(tmp_path / "encoded" / "001.parquet").metadata
    assert meta.num_row_groups == 1 and meta.num_rows > SLICE_ROWS  # read in slices
    assert str(meta.schema.to_arrow_schema().field("encoding").type) == "list<element: int64>"
    with StaticServer(tmp_path) as server:
        cfg = compose_train(["+experiment=debug", f"data.train_files={server.url('encoded/001.parquet')}",
                             f"data.val_files={server.url('encoded/002.parquet')}",
                             f"data.tokenizer={tiny_data / 'tokenizer'}", "trainer.max_steps=3",
                             "trainer.val_check_interval=3", "logger=csv"], output_dir=tmp_path / "run")
        metrics = train(cfg)
    assert metrics["global_step"] == 3 and np.isfinite(metrics["val/loss"])
    assert server.reads_of("001.parquet") and server.reads_of("002.parquet")
