"""Hugging Face datasets as encoder input: `input.format=hf input.path=ORG/NAME` (a hub dataset), a folder
written by `save_to_disk`, or a local folder of parquet/arrow/image files that `load_dataset` reads.

- Map-style (default): the dataset is memory-mapped Arrow (`load_dataset` converts it into its cache once,
  `load_from_disk` reads it in place, streaming or not), so items are its rows and nothing is held per item
  in RAM.
- `input.streaming=true`: nothing is downloaded first; each of the dataset's data files
  (`IterableDataset.num_shards`) is one piece of work, read from start to end by one DataLoader worker, and
  becomes output shard `NNNNN` of its position.

The image column is the first with the `Image` feature unless `input.image_column` names one; it is read
undecoded (`Image(decode=False)`: the file's bytes, or its path), decoded like every other input.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence, Union

from .image_sources import Sample
from .table_columns import IMAGE_COLUMNS, choose_columns, row_sample

ROWS_PER_READ = 64


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("input.format=hf needs the `datasets` library: pip install 'dalle-mini-pt[hf]' "
                          "(or pip install datasets)") from None
    return datasets


def load(path: str, split: str, streaming: bool, cache_dir: Optional[str]):
    datasets = _datasets()
    local = os.path.expanduser(path)
    if os.path.isdir(local) and any(os.path.exists(os.path.join(local, f))
                                    for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(local)  # a save_to_disk folder: already Arrow, read in place
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"input.path={path!r} has splits {list(ds)}, not input.split={split!r}")
            ds = ds[split]
        return ds  # memory-mapped already: streaming would only lose the random access
    return datasets.load_dataset(local if os.path.isdir(local) else path, split=split, streaming=streaming,
                                 cache_dir=cache_dir)


def image_feature_column(features) -> Optional[str]:
    datasets = _datasets()
    return next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)


def prepare(ds, image_column: Optional[str], caption_column: Optional[str], passthrough: Sequence[str],
            where: str):
    """The dataset with its image column undecoded, and the checked columns."""
    datasets = _datasets()
    if ds.features is None:
        raise ValueError(f"{where}: the dataset does not declare its features, so its image column cannot be "
                         "found before reading; load it without input.streaming, or name its features")
    image_column = image_column or image_feature_column(ds.features)
    if image_column is not None and isinstance(ds.features.get(image_column), datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    elif image_column is None and not any(c in ds.features for c in IMAGE_COLUMNS):
        raise ValueError(f"{where}: no column has the Image feature ({dict(ds.features)}); name the image "
                         "column with input.image_column=COLUMN")
    cols = choose_columns(ds.features.arrow_schema, where, image_column, caption_column, passthrough)
    return ds, cols


def rows(part) -> Iterator[dict]:
    """The rows of one data file. `IterableDataset.iter` because iterating the dataset itself inside a
    DataLoader worker makes it split its files among the workers once more (and skip ours)."""
    for batch in part.iter(batch_size=ROWS_PER_READ):
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            yield dict(zip(names, values))


class HFSource:
    """A map-style dataset: item i is row i."""

    def __init__(self, ds, cols, where: str):
        self.ds, self.cols, self.where = ds.with_format("arrow"), cols, where

    def __len__(self) -> int:
        return len(self.ds)

    def name(self, i: int) -> str:
        return f"{self.where}[{i}]"

    def read(self, i: int) -> Sample:
        row = self.ds[i].select(self.cols.names).to_pylist()[0]
        return row_sample(row, self.cols, ".", str(i))


class HFStreamSource:
    """A streamed dataset: each of its data files is a piece."""

    streamed = True

    def __init__(self, ds, cols, where: str):
        self.ds, self.cols, self.where = ds, cols, where

    def pieces(self) -> list[tuple[str, str]]:
        n = self.ds.num_shards
        return [(f"{k:05d}", f"{self.where} data file {k} of {n}") for k in range(n)]

    def stream(self, k: int) -> Iterator[tuple[str, Union[Sample, Exception]]]:
        part = self.ds.shard(num_shards=self.ds.num_shards, index=k, contiguous=True)
        for r, row in enumerate(rows(part)):
            try:
                yield f"{self.where} file {k} row {r}", row_sample(row, self.cols, ".", f"{k:05d}:{r}")
            except Exception as err:  # noqa: BLE001  (one bad row costs one item)
                yield f"{self.where} file {k} row {r}", err


def open_hf(path: str, split: str = "train", streaming: bool = False, cache_dir: Optional[str] = None,
            image_column: Optional[str] = None, caption_column: Optional[str] = None,
            passthrough: Sequence[str] = ()):
    where = f"input.path={path!r} split {split!r}"
    ds, cols = prepare(load(path, split, streaming, cache_dir), image_column, caption_column, passthrough,
                       where)
    return (HFStreamSource if isinstance(ds, _datasets().IterableDataset) else HFSource)(ds, cols, where)
