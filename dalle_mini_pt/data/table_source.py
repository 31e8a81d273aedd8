"""Image–caption tables: parquet files (one or many, local or fsspec URLs), or CSV/TSV files.

    input.format=table input.path='laion/{00000..00099}.parquet'     # img2dataset's parquet output
    input.format=table input.path=pairs.csv input.image_column=file input.caption_column=text

Items are the rows of the files in sorted file order. Nothing is held per item: parquet footers give each
file's row count, and item i is found from the files' cumulative counts; its row group is read when a
DataLoader worker first asks for one of its rows (each worker keeps the last two it read), reading only the
columns used. img2dataset writes row groups of 100 rows and Hugging Face's parquet export about as small
ones for image data, so a worker holds a few MB. CSV and TSV files cannot be read in parts: they are
loaded whole (as Arrow columns), so convert a table of millions of rows to parquet first.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .image_sources import Sample
from .input_files import PARALLEL_REQUESTS, expand_files
from .table_columns import choose_columns, row_sample

TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")
CACHED_ROW_GROUPS = 2


def _open(url: str):
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(url))
    return fs.open(path, "rb")


def _footer(url: str) -> pq.FileMetaData:
    try:
        with _open(url) as f:
            return pq.ParquetFile(f).metadata
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"input.path: {url} is not a readable parquet file ({type(err).__name__}: {err}); "
                         "tables are .parquet, .csv or .tsv files") from None


def _read_csv(url: str) -> pa.Table:
    delimiter = "\t" if url.lower().endswith(".tsv") else ","
    try:
        with _open(url) as f:
            return pacsv.read_csv(f, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"input.path={url!r}: not a readable {url.rsplit('.', 1)[-1]} table "
                         f"({type(err).__name__}: {err}); tables are .parquet, .csv or .tsv files") from None


class TableSource:
    def __init__(self, path: Union[str, Sequence[str]], image_column: Optional[str] = "image_path",
                 caption_column: Optional[str] = "caption", passthrough: Sequence[str] = ()):
        self.files = expand_files([str(p) for p in path] if isinstance(path, (list, tuple)) else str(path),
                                  "input.path", TABLE_SUFFIXES, "tables")
        self.loaded: dict[int, pa.Table] = {}  # CSV/TSV files, whole
        parquet = [f for f in self.files if f.lower().endswith(".parquet")]
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            footers = dict(zip(parquet, pool.map(_footer, parquet)))
        rows, self.group_starts, self.cols = [], [], None
        for i, f in enumerate(self.files):
            schema = footers[f].schema.to_arrow_schema() if f in footers else self._load(i).schema
            cols = choose_columns(schema, f, image_column, caption_column, passthrough)
            if self.cols is not None and cols != self.cols:
                raise ValueError(f"input.path: {f} has other image/caption columns or types than "
                                 f"{self.files[0]} ({cols} vs {self.cols}); encode them separately")
            self.cols = cols
            groups = ([footers[f].row_group(g).num_rows for g in range(footers[f].num_row_groups)]
                      if f in footers else [self.loaded[i].num_rows])
            self.group_starts.append(np.cumsum([0] + groups))
            rows.append(int(self.group_starts[-1][-1]))
        self.starts = np.cumsum([0] + rows)  # item i is in file searchsorted(starts, i, "right") - 1
        self._cache: OrderedDict = OrderedDict()
        self._pid = None

    def _load(self, i: int) -> pa.Table:
        self.loaded[i] = _read_csv(self.files[i])
        return self.loaded[i]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        f = bisect.bisect_right(self.starts, i) - 1
        return f, i - int(self.starts[f])

    def _row(self, i: int) -> dict:
        f, r = self._locate(i)
        g = int(np.searchsorted(self.group_starts[f], r, "right")) - 1
        table = self._group(f, g)
        return table.slice(r - int(self.group_starts[f][g]), 1).to_pylist()[0]

    def _group(self, f: int, g: int) -> pa.Table:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file positions
            self._cache, self._pid = OrderedDict(), os.getpid()
        if (f, g) not in self._cache:
            if f in self.loaded:
                table = self.loaded[f].select(self.cols.names)
            else:
                with _open(self.files[f]) as fh:
                    table = pq.ParquetFile(fh).read_row_group(g, columns=self.cols.names)
            self._cache[(f, g)] = table
            while len(self._cache) > CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        return self._cache[(f, g)]

    def name(self, i: int) -> str:
        f, r = self._locate(i)
        if self.cols.kind == "path":
            return str(self._row(i)[self.cols.image])
        return f"{self.files[f]}:{r}"

    def read(self, i: int) -> Sample:
        f, r = self._locate(i)
        base = self.files[f].rsplit("/", 1)[0] if "/" in self.files[f] else "."
        return row_sample(self._row(i), self.cols, base, f"{os.path.basename(self.files[f])}:{r}")
