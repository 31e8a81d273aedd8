"""Row groups larger than a slice, as the reference's shards have: the reader holds the shuffle buffer and
one slice, never the row group; filters, rank and worker boundaries and mid-epoch resume stay exact."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dalle_mini_pt.data import stream_plan
from dalle_mini_pt.data.row_reader import SLICE_ROWS, RowReader
from dalle_mini_pt.data.shard_index import RowFilter, ShardIndex
from dalle_mini_pt.data.stream_spec import StreamSpec
from dalle_mini_pt.data.streaming import StreamingDataModule

V, L = 32, 256
N = 3 * SLICE_ROWS + 500  # one row group of several slices, and a part slice at its end


def numbered(n: int) -> pa.Table:
    ids = np.arange(n)
    codes = np.zeros((n, L), dtype=np.int16)
    codes[:, 0], rest = np.divmod(ids, V * V)
    codes[:, 1], codes[:, 2] = np.divmod(rest, V)
    return pa.table({"caption": [f"a green star {i}" for i in ids], "clip_score": (ids % 10) / 10,
                     "encoding": pa.array(codes.tolist(), type=pa.list_(pa.int16()))})


def row_id(codes) -> int:
    c = [int(x) for x in codes[:3]]
    return (c[0] * V + c[1]) * V + c[2]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "000.parquet"
    pq.write_table(numbered(N), path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return path


@pytest.mark.parametrize("buffer", [1, 300])
def test_the_reader_holds_the_shuffle_buffer_and_one_slice_not_the_row_group(shard, buffer):
    spec = StreamSpec(image_length=L, codebook_size=V, batch_size=8, shuffle_buffer=buffer, seed=2)
    index = ShardIndex.build([str(shard)], "data.train_files", spec, RowFilter())
    plan = stream_plan.worker_plan(index.counts, spec, epoch=0, worker=0)
    reader = RowReader(index, plan.segments, np.ones(len(plan.order), dtype=bool), spec)
    held, seen = 0, []
    for position in plan.order[:plan.num_batches * spec.batch_size]:
        caption, codes = reader.take(int(position))
        held = max(held, len(reader.rows) + 1)
        seen.append(row_id(codes))
        assert caption == f"a green star {seen[-1]}" and codes.dtype == np.uint8  # 32 codes fit a byte
    assert sorted(seen) == list(range(N // 8 * 8))
    assert held <= buffer + SLICE_ROWS


def module(shard, tiny_data, **kwargs):
    args = dict(train_files=str(shard), tokenizer=str(tiny_data / "tokenizer"), text_length=16,
                image_length=L, codebook_size=V, batch_size=8, shuffle_buffer=500, seed=5)
    dm = StreamingDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def ids(loader) -> list[int]:
    return [row_id(row) for batch in loader for row in batch["labels"].numpy()]


def test_filters_and_boundaries_inside_one_row_group(shard, tiny_data):
    kept = {i for i in range(N) if 0.3 <= (i % 10) / 10 <= 0.6}
    parts = [ids(module(shard, tiny_data, rank=r, world_size=3, num_workers=2, min_clip_score=0.3,
                        max_clip_score=0.6, batch_size=4).train_dataloader()) for r in range(3)]
    union = parts[0] + parts[1] + parts[2]
    per_rank = len(kept) // 3 // 4 * 4  # whole batches of each rank's equal part
    assert len(union) == len(set(union)) == 3 * per_rank and set(union) <= kept


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_inside_a_row_group_is_exact(shard, tiny_data, workers):
    full = ids(module(shard, tiny_data, num_workers=workers, batch_size=32).train_dataloader())
    dm = module(shard, tiny_data, num_workers=workers, batch_size=32)
    it = iter(dm.train_dataloader())
    head = [row_id(row) for _ in range(45) for row in next(it)["labels"].numpy()]  # past the first slice
    state = dm.state_dict()
    del it
    resumed = module(shard, tiny_data, num_workers=workers, batch_size=32)
    resumed.load_state_dict(state)
    assert head + ids(resumed.train_dataloader()) == full
