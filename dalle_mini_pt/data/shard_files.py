"""The encoder's output folder, local or anywhere fsspec writes (`s3://`, `gs://`, ...): shards committed
whole, their recorded run settings, and the run's report.

A reader sees a shard whole or not at all. On a local (or other file-like) filesystem it is written to a
hidden `.NAME.tmp` beside it and renamed into place; an object store has no rename, but a single upload
becomes visible only once complete (S3's and GCS's multipart/resumable uploads commit on close), so there
the shard is uploaded under its final name.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .input_files import PARALLEL_REQUESTS, protocols
from .shards import META_KEY

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "gcsfs", "az", "abfs", "abfss", "adl", "memory"}
FAILED_SUFFIX = ".failed.json"  # a piece that could not be read: NAME.parquet.failed.json, for the report


class OutputDir:
    def __init__(self, url):
        self.url = os.path.expanduser(str(url))
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.uploads_atomically = bool(set(protocols(self.fs)) & OBJECT_STORES)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def display(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def makedirs(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def listing(self) -> set[str]:
        """Names of the files in the folder (none when it does not exist yet)."""
        self.fs.invalidate_cache(self.root)
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)}
        except FileNotFoundError:
            return set()

    def commit(self, name: str, write: Callable) -> None:
        """`write(file)` fills the file; readers see it only once it is whole."""
        if self.uploads_atomically:
            with self.fs.open(self.path(name), "wb") as f:
                write(f)
            return
        tmp = self.path(f".{name}.tmp")
        with self.fs.open(tmp, "wb") as f:
            write(f)
        if "file" in protocols(self.fs):
            os.replace(tmp, self.path(name))  # atomic on one filesystem
        else:
            self.fs.mv(tmp, self.path(name))

    def remove_stale(self) -> None:
        """Temporary files of a run killed while writing, and the failure notes of the last run."""
        for name in self.listing():
            if (name.startswith(".") and name.endswith(".tmp")) or name.endswith(FAILED_SUFFIX):
                self.fs.rm(self.path(name))

    def write_json(self, name: str, obj) -> None:
        self.commit(name, lambda f: f.write(json.dumps(obj, indent=1).encode()))

    def read_json(self, name: str):
        with self.fs.open(self.path(name), "rb") as f:
            return json.loads(f.read())

    def read_meta(self, name: str) -> dict:
        """The run settings a shard of ours records; a cut-off or foreign file in output_dir is named."""
        path = self.display(name)
        try:
            with self.fs.open(self.path(name), "rb") as f:
                metadata = pq.read_schema(f).metadata or {}
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: cut off or not parquet ({type(err).__name__}: {err}); it is no "
                             "shard this tool finished (those appear whole, by rename). Delete it and run "
                             "again: it is encoded anew") from None
        if META_KEY not in metadata:
            raise ValueError(f"{path} was not written by this encoder (its schema has no "
                             f"{META_KEY.decode()} metadata), so it cannot be resumed or reported on. Encode "
                             "into an empty output_dir, or move the foreign file away")
        return json.loads(metadata[META_KEY])

    def read_metas(self, names: Sequence[str]) -> list[dict]:
        """Footers read in parallel: on an object store each is a request."""
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            return list(pool.map(self.read_meta, names))


def shard_table(rows: list[dict], codes: np.ndarray, meta: dict, code_type: pa.DataType) -> pa.Table:
    columns = {"key": pa.array([r["key"] for r in rows], pa.string()),
               "caption": pa.array([r["caption"] for r in rows], pa.string()),
               "encoding": pa.array(codes.tolist(), type=pa.list_(code_type))}
    for name in meta["passthrough"]:
        columns[name] = pa.array([r.get(name) for r in rows])
    return pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def write_shard(out: OutputDir, name: str, table: pa.Table, row_group_size: int) -> None:
    buf = io.BytesIO()  # one upload of the finished bytes: a failed write leaves nothing behind
    pq.write_table(table, buf, row_group_size=row_group_size)
    out.commit(name, lambda f: f.write(buf.getvalue()))


def write_report(out: OutputDir, names: Sequence[str]) -> dict:
    """report.json over the run's planned shards: what each holds and skipped, and any not written."""
    present = out.listing()
    done = [n for n in names if n in present]
    metas = out.read_metas(done)
    bad = [b for m in metas for b in m["skipped"]]
    failed = [out.read_json(n + FAILED_SUFFIX) for n in names if n + FAILED_SUFFIX in present]
    items = sum(m["count"] if "count" in m else m["items"][1] - m["items"][0] for m in metas)
    report = {"items": items, "encoded": items - len(bad), "skipped": len(bad), "bad": bad, "shards": done,
              "missing": [n for n in names if n not in present], "failed": failed}
    out.write_json("report.json", report)
    return report
