"""StreamingDataModule: training batches streamed from encoded parquet shards, resumable mid-epoch.

    data=streaming data.train_files='data/encoded/train/*.parquet' data.tokenizer=PATH

The config keys become one frozen `StreamSpec`, handed down to the stream and its plan. Ranks and workers
split every epoch without overlap (see `stream_plan`); the shard index is built once per run, on global rank
0, and sent to the other ranks (`index_sharing`). `state_dict` records the `StreamPosition` (the epoch and
how many of its batches training consumed), and a run restored from a checkpoint continues from the next
one. Validation reads its own files, unshuffled, with no blank captions.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from ..text_normalizer import TextNormalizer
from ..tokenizer import TextTokenizer
from .index_sharing import Broadcast, built_once, torch_broadcast
from .shard_index import RowFilter, ShardIndex
from .shard_stream import ShardStream
from .shards import Files, resolve_files
from .stream_position import StreamPosition
from .stream_spec import StreamSpec

# Lightning warns that a worker-sharded IterableDataset's __len__ may be wrong (ShardStream's is exact), and
# that a loader without state_dict cannot resume mid-epoch (this DataModule's state_dict resumes it).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
warnings.filterwarnings("ignore",
                        message="You're resuming from a checkpoint that ended before the epoch ended")


class StreamLoader(DataLoader):
    """A DataLoader that starts each pass at the right epoch and batch: `epoch_fn` says which epoch begins
    (the trainer's, when there is one); the stream's position moves as batches are handed out."""

    def __init__(self, stream: ShardStream, epoch_fn, pin_memory: bool = False):
        super().__init__(stream, batch_size=None, num_workers=stream.spec.num_workers, pin_memory=pin_memory)
        self.epoch_fn = epoch_fn

    def __iter__(self):
        position = self.dataset.position
        position.begin(self.epoch_fn())  # before the workers start: each copies the position as it is now
        for batch in super().__iter__():
            position.advance()
            yield batch
        position.finish()


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
        self.spec = StreamSpec(image_length=image_length, codebook_size=codebook_size, batch_size=batch_size,
                               num_workers=num_workers, seed=seed, shuffle_buffer=shuffle_buffer,
                               drop_last=drop_last, blank_caption_prob=blank_caption_prob,
                               caption_column=caption_column, encoding_column=encoding_column)
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

    def _broadcast(self) -> tuple[int, Optional[Broadcast]]:
        """This process's global rank and the broadcast that reaches every process of the run (None: one
        process, or ranks set by hand without a process group)."""
        if self.trainer is not None and self.trainer.world_size > 1:
            return self.trainer.global_rank, self.trainer.strategy.broadcast
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            return torch.distributed.get_rank(), torch_broadcast
        return 0, None

    def _index(self, files: list[str], key: str, spec: StreamSpec, row_filter: RowFilter) -> ShardIndex:
        rank, broadcast = self._broadcast()
        return built_once(lambda: ShardIndex.build(files, key, spec, row_filter, self.vqgan_pixel_range),
                          rank, broadcast)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_index is None and self.train_files:
            self.train_index = self._index(self.train_files, "data.train_files", self.spec, self.row_filter)
        if self.val_index is None and self.val_files:
            # validation measures one fixed set; the training filters do not apply to it
            self.val_index = self._index(self.val_files, "data.val_files", self.spec.for_validation(),
                                         RowFilter())

    def _stream(self, index: ShardIndex, key: str, train: bool) -> ShardStream:
        spec = self.spec.placed(*self._layout())
        stream = ShardStream(index, spec if train else spec.for_validation(), self.tokenizer, self.normalizer,
                             self.position if train else None)
        if not len(stream):  # Lightning runs an epoch of no batches without a word: refuse before the start
            filtered = " after the filters" if train and self.row_filter.columns else ""
            raise ValueError(f"{key}: {index.num_rows} rows{filtered} make no batch of "
                             f"data.batch_size={spec.batch_size} on {spec.world_size} device(s) "
                             f"(data.drop_last={spec.drop_last}), so nothing would be trained or measured. "
                             "Lower data.batch_size or add rows")
        return stream

    def train_dataloader(self) -> StreamLoader:
        if not self.train_files:
            raise ValueError("data.train_files is not set: point it at the encoded training shards")
        if self.train_index is None:
            self.setup("fit")
        return StreamLoader(self._stream(self.train_index, "data.train_files", train=True), self._epoch,
                            pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        if not self.val_files:
            return []
        if self.val_index is None:
            self.setup("validate")
        # a plain loader: every pass reads the whole set from its start. (A StreamLoader resumes where the
        # last pass stopped, and Lightning stops after len() batches without exhausting the iterator, so
        # every second validation pass read nothing.)
        return DataLoader(self._stream(self.val_index, "data.val_files", train=False), batch_size=None,
                          num_workers=self.spec.num_workers, pin_memory=torch.cuda.is_available())

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
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return self.position.batches

    def state_dict(self) -> dict:
        return {**asdict(StreamPosition(self.position.epoch, self._consumed())),
                "layout": self._state_layout()}

    def _state_layout(self) -> dict:
        return {**self.spec.placed(*self._layout()).resume_layout(),
                "rows": self.train_index.num_rows if self.train_index else None}

    def load_state_dict(self, state: dict) -> None:
        saved, now = state.get("layout", {}), self._state_layout()
        changed = {k: (saved.get(k), v) for k, v in now.items() if v is not None and saved.get(k) != v}
        if changed and state["batches"]:
            # another split of the epoch: the saved batch count no longer names the same rows
            raise ValueError(f"cannot resume the data stream mid-epoch: {changed} (saved, now) differ from "
                             "the checkpoint's run. Resume with the same data, batch_size, num_workers, seed "
                             "and devices, or resume from an end-of-epoch checkpoint.")
        self.position.restore(state["epoch"], state["batches"])
