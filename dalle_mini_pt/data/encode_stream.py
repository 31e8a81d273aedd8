"""The encoder's input pipeline: a rank's tasks, read and decoded in DataLoader workers, as image batches.

Every batch belongs to one piece and says which of the piece's items it holds (`positions`: item numbers of
an indexed piece, the order in the file of a streamed one), so the writer can put each shard's rows in one
fixed order whatever worker produced them. The last batch of a task carries `last`; a streamed piece that
could not be read to its end carries `failed` instead of being half written. A bad image, caption or row
costs that item only: it is returned as an error, named, and listed in the shard.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .encode_plan import Piece
from .image_sources import error_message, load_image

Name = Union[str, Callable[[], str]]  # an indexed item is named (source.name(i)) only when it is bad


def indexed_items(source, start: int, stop: int) -> Iterator[tuple[int, Name, object]]:
    for i in range(start, stop):
        try:
            sample = source.read(i)
        except Exception as err:  # noqa: BLE001  (PIL and fsspec raise many types for one bad file)
            sample = err
        yield i, (lambda i=i: source.name(i)), sample


def streamed_items(source, k: int) -> Iterator[tuple[int, Name, object]]:
    for position, (name, sample) in enumerate(source.stream(k)):
        yield position, name, sample


def decode(position: int, name: Name, sample, resolution: int):
    """(position, image or None, sample, error): errors are kept as (item name, message), not raised."""
    if not isinstance(sample, Exception):
        try:
            return position, torch.from_numpy(load_image(sample.image, resolution)), sample, None
        except Exception as err:  # noqa: BLE001
            sample = err
    return position, None, None, (name if isinstance(name, str) else name(), error_message(sample))


def make_batch(piece: int, decoded: list, last: bool, failed: Optional[str] = None,
               pad_to: int = 0) -> dict:
    """`pad_to`: images padded with black ones up to that many (their codes are cut off again)."""
    good = [d for d in decoded if d[3] is None]
    images = [d[1] for d in good]
    if good and len(images) < pad_to:
        images += [torch.zeros_like(images[0])] * (pad_to - len(images))
    return {"piece": piece, "positions": [d[0] for d in decoded],
            "good": [d[0] for d in good],
            "images": torch.stack(images) if good else None,
            "rows": [{"key": d[2].key, "caption": d[2].caption, **d[2].fields} for d in good],
            "errors": [(d[0], *d[3]) for d in decoded if d[3] is not None],
            "last": last, "failed": failed}


class TaskStream(IterableDataset):
    """DataLoader worker w of W reads tasks w, w + W, ... of this rank's list."""

    def __init__(self, source, pieces: list[Piece], tasks: list[tuple[int, int, int]], resolution: int,
                 batch_size: int, pad: bool = False):
        self.source, self.pieces, self.tasks = source, pieces, tasks
        self.resolution, self.batch_size = resolution, batch_size
        self.pad_to = batch_size if pad else 0

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for k, start, stop in self.tasks[worker::workers]:
            if stop < 0:
                yield from self._streamed(k)
            else:
                items = indexed_items(self.source, start, stop)
                decoded = [decode(p, n, s, self.resolution) for p, n, s in items]
                yield make_batch(k, decoded, last=True, pad_to=self.pad_to)

    def _streamed(self, k: int):
        """Batches of one streamed piece; a failure to read it ends the piece with `failed`, so the other
        pieces go on and the run reports this one as not written."""
        decoded = []
        try:
            for position, name, sample in streamed_items(self.source, k):
                decoded.append(decode(position, name, sample, self.resolution))
                if len(decoded) == self.batch_size:
                    yield make_batch(k, decoded, last=False, pad_to=self.pad_to)
                    decoded = []
        except Exception as err:  # noqa: BLE001  (a cut tar, a dropped connection, a missing file)
            yield make_batch(k, [], last=True, failed=error_message(err))
            return
        yield make_batch(k, decoded, last=True, pad_to=self.pad_to)


def identity_collate(batch: dict) -> dict:
    """Batches are built in the workers (batch_size=None): a batch never mixes two pieces."""
    return batch
