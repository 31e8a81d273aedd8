"""DataModule of rendered shape scenes as images + captions, for the stages that learn from pixels
(the VQGAN and the CLIP scorer). Scenes come from `shapes.make_split`, so every split is reproducible."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .scenes import RESOLUTION, make_split


class ShapeImages(Dataset):
    def __init__(self, split: str, n: int, resolution: int, seed: int):
        captions, images = make_split(split, n, resolution, seed)
        self.captions = captions
        # one uint8 array: 5000 scenes at 64 px are 60 MB, so no need to render lazily
        self.images = np.stack([np.asarray(im) for im in images])

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255
        return {"images": image, "captions": self.captions[i]}


def collate(items: list[dict]) -> dict:
    return {"images": torch.stack([it["images"] for it in items]),
            "captions": [it["captions"] for it in items]}


class ShapeImagesDataModule(pl.LightningDataModule):
    """`train_split="all"` trains on scenes of every pair, held-out ones included: only for the VQGAN,
    which never reads a caption (as the real VQGAN learnt ImageNet apart from the text pairs)."""

    def __init__(self, n_train: int = 4000, n_val: int = 256, resolution: int = RESOLUTION, seed: int = 0,
                 batch_size: int = 32, num_workers: int = 0, train_split: str = "train"):
        super().__init__()
        if min(n_train, n_val, batch_size) < 1:
            raise ValueError("data.n_train, data.n_val and data.batch_size must be >= 1")
        if train_split not in ("train", "all"):
            raise ValueError(f"data.train_split={train_split!r}: use train (seen pairs) or all (every pair)")
        self.n_train, self.n_val, self.resolution, self.seed = n_train, n_val, resolution, seed
        self.train_split = train_split
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: Optional[ShapeImages] = None
        self.val_set: Optional[ShapeImages] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set = ShapeImages(self.train_split, self.n_train, self.resolution, self.seed)
            self.val_set = ShapeImages("validation", self.n_val, self.resolution, self.seed + 1)

    def _loader(self, dataset: ShapeImages, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
