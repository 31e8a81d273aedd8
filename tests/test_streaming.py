"""StreamingDataModule: rank × worker sharding, filters, blank captions, validation and mid-epoch resume."""

from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch

from dalle_mini_pt.data.streaming import StreamingDataModule
from dalle_mini_pt.text_normalizer import TextNormalizer

N = 96  # rows over 3 files, in row groups of 7 (chunks straddle rank and worker boundaries)
V, L = 32, 256


def rows(start, stop):
    ids = np.arange(start, stop)
    codes = np.zeros((len(ids), L), dtype=np.int16)
    codes[:, 0], codes[:, 1] = ids // V, ids % V  # the row id, readable back from the labels
    return pa.table({"caption": [f"A RED Square {i}" for i in ids],
                     "encoding": pa.array(codes.tolist(), type=pa.list_(pa.int16())),
                     "clip_score": ids / N, "source": ["web" if i % 3 else "book" for i in ids]})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for f, (a, b) in enumerate([(0, 40), (40, 41), (41, N)]):
        pq.write_table(rows(a, b), root / "train" / f"{f:05d}.parquet", row_group_size=7)
    pq.write_table(rows(N, N + 20), root / "val" / "00000.parquet", row_group_size=7)
    return root


def datamodule(shards, tiny_data, **kwargs):
    args = dict(train_files=str(shards / "train" / "*.parquet"), tokenizer=str(tiny_data / "tokenizer"),
                text_length=16, image_length=L, codebook_size=V, batch_size=4, shuffle_buffer=16, seed=3)
    dm = StreamingDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def ids(batch):
    return (batch["labels"][:, 0] * V + batch["labels"][:, 1]).tolist()


def epoch_ids(loader):
    return [i for batch in loader for i in ids(batch)]


def test_two_ranks_by_two_workers_see_every_row_once_per_epoch(shards, tiny_data):
    seen = {}
    for rank in (0, 1):
        dm = datamodule(shards, tiny_data, rank=rank, world_size=2, num_workers=2)
        loader = dm.train_dataloader()
        seen[rank] = [epoch_ids(loader), epoch_ids(loader)]  # two epochs
        assert len(loader) == 12 and all(len(e) == 48 for e in seen[rank])
    for epoch in (0, 1):
        union = seen[0][epoch] + seen[1][epoch]
        assert sorted(union) == list(range(N)), f"epoch {epoch}: repeats or misses"
    assert seen[0][0] != seen[0][1]  # reshuffled per epoch
    again = datamodule(shards, tiny_data, rank=0, world_size=2, num_workers=2).train_dataloader()
    assert epoch_ids(again) == seen[0][0]  # seeded


def test_uneven_split_keeps_ranks_in_step_without_repeats(shards, tiny_data):
    """96 rows, 2 ranks, batch 5, 2 workers: 9 full batches per rank (5 + 4 by worker), 6 rows wait."""
    per_rank = []
    for rank in (0, 1):
        loader = datamodule(shards, tiny_data, rank=rank, world_size=2, num_workers=2, batch_size=5)\
            .train_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader) == 9 and all(b["labels"].shape == (5, L) for b in batches)
        assert all(b["input_ids"].shape == (5, 16) for b in batches)
        per_rank.append([i for b in batches for i in ids(b)])
    union = per_rank[0] + per_rank[1]
    assert len(union) == len(set(union)) == 90


def test_clip_score_and_column_filters(shards, tiny_data):
    dm = datamodule(shards, tiny_data, min_clip_score=0.25, max_clip_score=0.75, batch_size=1)
    assert sorted(epoch_ids(dm.train_dataloader())) == [i for i in range(N) if 0.25 <= i / N <= 0.75]
    dm = datamodule(shards, tiny_data, filter_column="source", filter_value="book", batch_size=1)
    assert sorted(epoch_ids(dm.train_dataloader())) == list(range(0, N, 3))
    with pytest.raises(ValueError, match="no column 'score'.*data.clip_score_column"):
        datamodule(shards, tiny_data, min_clip_score=0.5, clip_score_column="score")


def test_blank_captions_and_text_normaliser(shards, tiny_data):
    tok = datamodule(shards, tiny_data).tokenizer
    empty = tok([""])["input_ids"][0]

    def blanked(loader):
        return {i for b in loader for i, row in zip(ids(b), b["input_ids"]) if (row == empty).all()}

    dm = datamodule(shards, tiny_data, blank_caption_prob=0.5, num_workers=2, val_files=str(shards / "val"))
    loader = dm.train_dataloader()
    epoch0, epoch1 = blanked(loader), blanked(loader)
    assert 0.3 < len(epoch0) / N < 0.7 and epoch0 != epoch1  # drawn afresh each epoch
    again = datamodule(shards, tiny_data, blank_caption_prob=0.5, num_workers=2)
    assert blanked(again.train_dataloader()) == epoch0  # seeded
    assert not blanked(dm.val_dataloader())  # train only
    assert not blanked(datamodule(shards, tiny_data).train_dataloader())
    assert len(blanked(datamodule(shards, tiny_data, blank_caption_prob=1.0).train_dataloader())) == N

    norm = datamodule(shards, tiny_data, normalize_text=True, shuffle_buffer=1, seed=0)
    batch = next(iter(norm.train_dataloader()))
    captions = [f"A RED Square {i}" for i in ids(batch)]
    assert torch.equal(batch["input_ids"], tok([TextNormalizer()(c) for c in captions])["input_ids"])
    assert not torch.equal(batch["input_ids"], tok(captions)["input_ids"])


def test_validation_reads_its_own_files_in_order(shards, tiny_data):
    dm = datamodule(shards, tiny_data, val_files=str(shards / "val" / "*.parquet"), min_clip_score=2.0,
                    num_workers=2)
    assert sorted(epoch_ids(dm.val_dataloader())) == list(range(N, N + 20))  # training filters do not apply
    in_process = datamodule(shards, tiny_data, val_files=str(shards / "val"), blank_caption_prob=1.0)
    assert epoch_ids(in_process.val_dataloader()) == list(range(N, N + 20))  # unshuffled
    dm1 = datamodule(shards, tiny_data, val_files=str(shards / "val"), rank=1, world_size=2)
    assert epoch_ids(dm1.val_dataloader()) == list(range(N + 10, N + 18))  # 10 per rank, 2 full batches


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_saved_state_yields_exactly_the_remaining_samples(shards, tiny_data, workers):
    full = epoch_ids(datamodule(shards, tiny_data, num_workers=workers, batch_size=5).train_dataloader())
    dm = datamodule(shards, tiny_data, num_workers=workers, batch_size=5)
    it = iter(dm.train_dataloader())
    head = [i for _ in range(7) for i in ids(next(it))]
    state = dm.state_dict()
    del it
    assert state["epoch"] == 0 and state["batches"] == 7
    resumed = datamodule(shards, tiny_data, num_workers=workers, batch_size=5)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    assert head + epoch_ids(loader) == full
    next_epoch = epoch_ids(loader)  # whole again: 19 batches of 5
    assert len(set(next_epoch)) == len(next_epoch) == 95 and next_epoch != full
    with pytest.raises(ValueError, match="num_workers"):
        datamodule(shards, tiny_data, num_workers=workers + 1, batch_size=5).load_state_dict(state)


class Recorder(pl.LightningModule):
    """The smallest module that trains: it records which rows each step saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen += ids(batch)
        return (self.w * batch["labels"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm, tmp_path, max_steps, ckpt_path=None, every=None):
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] \
        if every else []
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, callbacks=callbacks,
                         enable_model_summary=False, enable_checkpointing=bool(every),
                         default_root_dir=tmp_path)
    module = Recorder()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module.seen


def test_trainer_resumes_mid_epoch_from_a_checkpoint(shards, tiny_data, tmp_path):
    """Through Lightning's own checkpointing: it fetches a batch ahead, which must not be skipped."""
    make = lambda: datamodule(shards, tiny_data, num_workers=2, batch_size=8)  # noqa: E731
    whole = fit(make(), tmp_path / "a", max_steps=12)  # one epoch
    fit(make(), tmp_path / "b", max_steps=5, every=5)
    (ckpt,) = Path(tmp_path / "b").glob("*step=5.ckpt")
    rest = fit(make(), tmp_path / "c", max_steps=12, ckpt_path=ckpt)
    assert whole[:40] + rest == whole and sorted(whole) == list(range(N))


def test_errors_name_the_key_and_the_file(shards, tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_files"):
        datamodule(shards, tiny_data, train_files=str(tmp_path / "none" / "*.parquet"))
    short = tmp_path / "short.parquet"
    pq.write_table(pa.table({"caption": ["x"], "encoding": [[1] * 16]}), short)
    with pytest.raises(ValueError,
                       match="data.train_files: .*short.parquet row 0: 16 codes.*image_length=256"):
        datamodule(shards, tiny_data, train_files=str(short))
    with pytest.raises(ValueError, match="data.val_files: .*short.parquet row 0: 16 codes"):
        datamodule(shards, tiny_data, val_files=str(short))
    late = tmp_path / "late.parquet"  # a bad code in a later row group is caught when it is read
    table = rows(0, 14)
    codes = np.array(table.column("encoding").to_pylist())
    codes[10, 5] = V
    pq.write_table(table.set_column(1, "encoding", pa.array(codes.tolist())), late, row_group_size=7)
    dm = datamodule(shards, tiny_data, train_files=str(late), batch_size=2)
    with pytest.raises(ValueError, match="late.parquet row 10: codes outside the codebook 0..31"):
        list(dm.train_dataloader())
    with pytest.raises(ValueError, match="no column 'text'.*data.caption_column"):
        datamodule(shards, tiny_data, caption_column="text")


def test_fsspec_urls(shards, tiny_data):
    fs = fsspec.filesystem("memory")
    for p in sorted((shards / "train").glob("*.parquet")):
        fs.pipe(f"/stream-test/{p.name}", p.read_bytes())
    dm = datamodule(shards, tiny_data, train_files="memory://stream-test/*.parquet")
    assert dm.train_files[0].startswith("memory://")
    assert sorted(epoch_ids(dm.train_dataloader())) == list(range(N))
    local = datamodule(shards, tiny_data, train_files=f"file://{shards}/train/*.parquet")
    assert sorted(epoch_ids(local.train_dataloader())) == list(range(N))


def round_robin(counts):
    """The order a DataLoader returns worker batches in: cyclic, passing over workers that ran out."""
    left, out, w = list(counts), [], 0
    while any(left):
        if left[w]:
            out.append((w, counts[w] - left[w]))
            left[w] -= 1
        w = (w + 1) % len(counts)
    return out


@pytest.mark.parametrize("counts", [[3, 3], [3, 2], [2, 3], [4, 4, 3], [1, 3, 2], [0, 2], [5]])
def test_resume_point_continues_the_round_robin(counts):
    from dalle_mini_pt.data.stream_plan import resume_point

    full = round_robin(counts)
    for consumed in range(len(full) + 1):
        skips, first = resume_point(consumed, counts)
        roles = [(w + first) % len(counts) for w in range(len(counts))]
        rest = [(roles[w], skips[roles[w]] + b)
                for w, b in round_robin([counts[r] - skips[r] for r in roles])]
        assert full[:consumed] + rest == full, (consumed, skips, first)


@pytest.mark.parametrize("n, world, workers, batch, drop_last", [
    (96, 2, 2, 5, False), (97, 3, 2, 4, True), (50, 1, 3, 7, False), (10, 4, 2, 4, False)])
def test_plans_split_an_epoch_without_overlap(n, world, workers, batch, drop_last):
    from dalle_mini_pt.data.stream_plan import rank_batch_counts, worker_plan
    from dalle_mini_pt.data.stream_spec import StreamSpec

    counts = np.array([7] * (n // 7) + [n % 7])
    seen = []
    for rank in range(world):
        spec = StreamSpec(image_length=L, codebook_size=V, batch_size=batch, num_workers=workers, seed=1,
                          shuffle=True, shuffle_buffer=8, drop_last=drop_last, rank=rank, world_size=world)
        for worker in range(workers):
            plan = worker_plan(counts, spec, epoch=2, worker=worker)
            assert sorted(plan.order.tolist()) == list(range(len(plan.order)))
            seen += [(s.chunk, k) for s in plan.segments for k in range(s.lo, s.hi)]
        assert len(rank_batch_counts(n, spec)) == workers
    per_rank = n // world
    expected = world * (per_rank if not drop_last else per_rank // batch * batch)
    assert len(seen) == len(set(seen)) == expected
