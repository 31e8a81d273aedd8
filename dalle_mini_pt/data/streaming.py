"""StreamingDataModule: training batches streamed from encoded parquet shards, resumable mid-epoch.

    data=streaming data.train_files='data/encoded/train/*.parquet' data.tokenizer=PATH

Ranks and workers split every epoch without overlap (see `stream_plan`); `state_dict` records the epoch and
how many of its batches training consumed, and a run restored from a checkpoint continues from the next one.
Validation reads its own files, unshuffled, with no blank captions.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from ..text_normalizer import TextNormalizer
from ..tokenizer import TextTokenizer
from .shard_stream import ShardStream
from .shards import Files, RowFilter, ShardIndex, check_codes, open_parquet, resolve_files

# Lightning warns that a worker-sharded IterableDataset's __len__ may be wrong (ShardStream's is exact), and
# that a loader without state_dict cannot resume mid-epoch (this DataModule's state_dict resumes it).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
warnings.filterwarnings("ignore",
                        message="You're resuming from a checkpoint that ended before the epoch ended")


@dataclass
class StreamPosition:
    epoch: int = 0  # the epoch in progress (or the next to start)
    batches: int = 0  # batches of that epoch handed out so far


class StreamLoader(DataLoader):
    """A DataLoader that starts each pass at the right epoch and sample: `epoch_fn` says which epoch begins
    (the trainer's, when there is one); batches already consumed of that epoch are skipped."""

    def __init__(self, stream: ShardStream, position: StreamPosition, epoch_fn, num_workers: int,
                 pin_memory: bool = False):
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
        self.position, self.epoch_fn = position, epoch_fn

    def __iter__(self):
        epoch = self.epoch_fn()
        if epoch != self.position.epoch:
            self.position.epoch, self.position.batches = epoch, 0
        # set before the workers start: each copies the dataset as it is now
        self.dataset.start(epoch, self.position.batches)
        for batch in super().__iter__():
            self.position.batches += 1
            yield batch
        self.position.epoch, self.position.batches = epoch + 1, 0


class StreamingDataModule(pl.LightningDataModule):
    """Filters follow the reference: `min_clip_score`/`max_clip_score` on `clip_score_column`, and
    `filter_column == filter_value`. `rank`/`world_size` default to the trainer's (or torch.distributed's)."""

    def __init__(self, train_files: Optional[Files], tokenizer: Optional[str], text_length: int,
                 image_length: int, codebook_size: int, batch_size: int, val_files: Optional[Files] = None,
                 num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 5000, drop_last: bool = True,
                 blank_caption_prob: float = 0.0, normalize_text: bool = False,
                 word_frequency_path: Optional[str] = None, min_clip_score: Optional[float] = None,
                 max_clip_score: Optional[float] = None, clip_score_column: str = "clip_score",
                 filter_column: Optional[str] = None, filter_value=None, caption_column: str = "caption",
                 encoding_column: str = "encoding", rank: Optional[int] = None,
                 world_size: Optional[int] = None, vqgan_pixel_range: Optional[str] = None):
        super().__init__()
        if not 0.0 <= blank_caption_prob <= 1.0:
            raise ValueError(f"data.blank_caption_prob={blank_caption_prob} must be within [0, 1]")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        if (filter_column is None) != (filter_value is None):
            raise ValueError("data.filter_column and data.filter_value go together: set both or neither")
        # resolved now so a missing shard or tokenizer fails before any model is built
        self.train_files = resolve_files(train_files, "data.train_files") if train_files else []
        self.val_files = resolve_files(val_files, "data.val_files") if val_files else []
        if not tokenizer:
            raise ValueError("data.tokenizer is not set: name the captions' tokenizer (a hub name or a "
                             "directory), or set model.init_from, whose tokenizer is the default")
        self.tokenizer = TextTokenizer.from_pretrained(tokenizer, text_length)
        self.normalizer = TextNormalizer(word_frequency_path, seed=seed) if normalize_text else None
        self.row_filter = RowFilter(min_clip_score, max_clip_score, clip_score_column, filter_column,
                                    filter_value)
        self.image_length, self.codebook_size = image_length, codebook_size
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.seed, self.shuffle_buffer, self.blank_caption_prob = seed, shuffle_buffer, blank_caption_prob
        self.columns = {"data.caption_column": caption_column, "data.encoding_column": encoding_column}
        self.rank, self.world_size, self.vqgan_pixel_range = rank, world_size, vqgan_pixel_range
        self.position = StreamPosition()
        self.train_index: Optional[ShardIndex] = None
        self.val_index: Optional[ShardIndex] = None

    def _layout(self) -> tuple[int, int]:
        """(rank, world_size): explicit, else the trainer's (DDP and XLA alike), else torch.distributed's."""
        if self.world_size is not None:
            return self.rank or 0, self.world_size
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _index(self, files: list[str], key: str, row_filter: RowFilter) -> ShardIndex:
        try:
            index = ShardIndex(files, key, row_filter, self.columns, self.vqgan_pixel_range)
            # read one row group now, so shards of the wrong VQGAN or model fail before training starts
            pf = open_parquet(files[0])
            if pf.metadata.num_row_groups:
                check_codes(files[0], pf.read_row_group(0, columns=[self.columns["data.encoding_column"]])
                            .column(0), self.image_length, self.codebook_size)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
        return index

    def _nonempty(self, stream: ShardStream, key: str) -> ShardStream:
        """Lightning runs an epoch of no batches without a word: refuse before the first step instead."""
        if not len(stream):
            filtered = " after the filters" if key == "data.train_files" and self.row_filter.columns else ""
            raise ValueError(f"{key}: {stream.index.num_rows} rows{filtered} make no batch of "
                             f"data.batch_size={self.batch_size} on {stream.world_size} device(s) "
                             f"(data.drop_last={self.drop_last}), so nothing would be trained or measured. "
                             "Lower data.batch_size or add rows")
        return stream

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_index is None and self.train_files:
            self.train_index = self._index(self.train_files, "data.train_files", self.row_filter)
        if self.val_index is None and self.val_files:
            # validation measures one fixed set; the training filters do not apply to it
            self.val_index = self._index(self.val_files, "data.val_files", RowFilter())

    def _stream(self, index: ShardIndex, train: bool) -> ShardStream:
        rank, world_size = self._layout()
        return ShardStream(
            index, self.tokenizer, image_length=self.image_length, codebook_size=self.codebook_size,
            batch_size=self.batch_size, rank=rank, world_size=world_size, num_workers=self.num_workers,
            shuffle=train, seed=self.seed, shuffle_buffer=self.shuffle_buffer, drop_last=self.drop_last,
            blank_caption_prob=self.blank_caption_prob if train else 0.0, normalizer=self.normalizer,
            columns=(self.columns["data.caption_column"], self.columns["data.encoding_column"]))

    def train_dataloader(self) -> StreamLoader:
        if not self.train_files:
            raise ValueError("data.train_files is not set: point it at the encoded training shards")
        if self.train_index is None:
            self.setup("fit")
        stream = self._nonempty(self._stream(self.train_index, train=True), "data.train_files")
        return StreamLoader(stream, self.position, self._epoch, self.num_workers,
                            pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        if not self.val_files:
            return []
        if self.val_index is None:
            self.setup("validate")
        # a plain loader: every pass reads the whole set from its start. (A StreamLoader resumes where the
        # last pass stopped, and Lightning stops after len() batches without exhausting the iterator, so
        # every second validation pass read nothing.)
        stream = self._nonempty(self._stream(self.val_index, train=False), "data.val_files")
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available())

    def test_dataloader(self):
        """The validation shards, for `python -m dalle_mini_pt.eval` (the same batches validation reads)."""
        if not self.val_files:
            raise ValueError("data.val_files is not set: point it at the shards to evaluate on")
        return self.val_dataloader()

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else self.position.epoch

    def _consumed(self) -> int:
        """Batches of the current epoch that training has used. Lightning fetches one batch ahead, so when a
        trainer runs the loop its count is the truth, not the loader's."""
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
            return progress.processed
        return self.position.batches

    def state_dict(self) -> dict:
        return {**asdict(StreamPosition(self.position.epoch, self._consumed())),
                "layout": self._state_layout()}

    def _state_layout(self) -> dict:
        rank, world_size = self._layout()
        return {"world_size": world_size, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "seed": self.seed, "rows": self.train_index.num_rows if self.train_index else None}

    def load_state_dict(self, state: dict) -> None:
        saved, now = state.get("layout", {}), self._state_layout()
        changed = {k: (saved.get(k), v) for k, v in now.items() if v is not None and saved.get(k) != v}
        if changed and state["batches"]:
            # another split of the epoch: the saved batch count no longer names the same rows
            raise ValueError(f"cannot resume the data stream mid-epoch: {changed} (saved, now) differ from "
                             "the checkpoint's run. Resume with the same data, batch_size, num_workers, seed "
                             "and devices, or resume from an end-of-epoch checkpoint.")
        self.position = StreamPosition(int(state["epoch"]), int(state["batches"]))
