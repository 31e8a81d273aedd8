"""Minimal DataModule over pre-encoded parquet shards, the reference's format.

Each row holds a `caption` string and an `encoding` list of `image_length` VQGAN code ids (row-major).
Shards are read whole into memory here; the streaming DataModule of the data issue reads the same files.
"""

from __future__ import annotations

import glob
import os
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..tokenizer import TextTokenizer

Files = Union[str, Sequence[str]]


def resolve_files(files: Files, key: str) -> list[str]:
    """Expand globs; fail naming the config key when nothing matches."""
    patterns = [files] if isinstance(files, str) else list(files)
    found = sorted({f for p in patterns for f in glob.glob(os.path.expanduser(p))})
    if not found:
        raise FileNotFoundError(
            f"{key}={patterns!r} matches no file. Point {key} at your encoded parquet shards, or make the "
            "small demo set with `python -m dalle_mini_pt.data.tiny_dataset --out data/tiny`.")
    return found


def read_encoded(files: list[str], image_length: int, codebook_size: int,
                 caption_column: str = "caption", encoding_column: str = "encoding"):
    captions, codes = [], []
    for path in files:
        table = pq.read_table(path)
        for column in (caption_column, encoding_column):
            if column not in table.column_names:
                raise ValueError(f"{path}: no column {column!r} (has {table.column_names}); set "
                                 f"data.caption_column / data.encoding_column to the right names")
        enc = table.column(encoding_column).to_pylist()
        bad = next((i for i, row in enumerate(enc) if len(row) != image_length), None)
        if bad is not None:
            raise ValueError(f"{path} row {bad}: {len(enc[bad])} codes, the model expects image_length="
                             f"{image_length}; re-encode with the model's VQGAN or fix model.net.config.image_length")
        arr = np.asarray(enc, dtype=np.int64).reshape(-1, image_length)
        if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
            row = int(np.argmax((arr < 0).any(1) | (arr >= codebook_size).any(1)))
            raise ValueError(f"{path} row {row}: codes outside the codebook 0..{codebook_size - 1} "
                             f"(min {arr.min()}, max {arr.max()}); the shards were encoded with another VQGAN "
                             "or model.net.config.codebook_size is wrong")
        captions += [c or "" for c in table.column(caption_column).to_pylist()]
        codes.append(arr)
    return captions, np.concatenate(codes)


class EncodedDataset(Dataset):
    def __init__(self, captions: list[str], codes: np.ndarray):
        self.captions, self.codes = captions, codes

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return self.captions[i], self.codes[i]


class Collate:
    """Tokenise a batch to the fixed text length; blank captions with `blank_caption_prob` (train only),
    which is what teaches the model the unconditional prompt used by super-conditioning."""

    def __init__(self, tokenizer: TextTokenizer, blank_caption_prob: float = 0.0):
        self.tokenizer, self.blank_caption_prob = tokenizer, blank_caption_prob

    def __call__(self, items):
        captions = [c for c, _ in items]
        if self.blank_caption_prob > 0:
            blank = torch.rand(len(captions)) < self.blank_caption_prob
            captions = ["" if b else c for c, b in zip(captions, blank.tolist())]
        enc = self.tokenizer(captions)
        labels = torch.from_numpy(np.stack([codes for _, codes in items]))
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


class EncodedParquetDataModule(pl.LightningDataModule):
    def __init__(self, train_files: Files, tokenizer: str, text_length: int, image_length: int,
                 codebook_size: int, batch_size: int, val_files: Optional[Files] = None, num_workers: int = 0,
                 blank_caption_prob: float = 0.0, drop_last: bool = True,
                 caption_column: str = "caption", encoding_column: str = "encoding"):
        super().__init__()
        if not 0.0 <= blank_caption_prob <= 1.0:
            raise ValueError(f"data.blank_caption_prob={blank_caption_prob} must be within [0, 1]")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        # resolved now so a missing shard or tokenizer fails before any model is built
        self.train_files = resolve_files(train_files, "data.train_files")
        self.val_files = resolve_files(val_files, "data.val_files") if val_files else []
        self.tokenizer = TextTokenizer.from_pretrained(tokenizer, text_length)
        self.image_length, self.codebook_size = image_length, codebook_size
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.blank_caption_prob = blank_caption_prob
        self.columns = dict(caption_column=caption_column, encoding_column=encoding_column)
        self.train_set: Optional[EncodedDataset] = None
        self.val_set: Optional[EncodedDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set = EncodedDataset(*read_encoded(self.train_files, self.image_length,
                                                          self.codebook_size, **self.columns))
        if self.val_set is None and self.val_files:
            self.val_set = EncodedDataset(*read_encoded(self.val_files, self.image_length,
                                                        self.codebook_size, **self.columns))

    def _loader(self, dataset: EncodedDataset, train: bool) -> DataLoader:
        # fixed batch shapes (drop_last) keep XLA from recompiling on a short last batch
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, drop_last=self.drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=Collate(self.tokenizer, self.blank_caption_prob if train else 0.0))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False) if self.val_set is not None else []
