"""Input file lists as users write them: local paths or fsspec URLs, brace patterns, globs, folders.

    input.path='s3://bucket/cc12m/{00000..01242}.tar'      # braceexpand, as webdataset writes them
    input.path='/data/laion/*.parquet'                      # a glob
    input.path=[a.tar, b.tar.gz]                            # a list of any of these
    input.path=gs://bucket/cc12m                            # a folder: its files of the format's suffixes

Braces are expanded first (`braceexpand`, webdataset's own dependency), then globs through the file's own
filesystem; a name without glob characters is kept as written and must exist. Files are opened through
fsspec, so `s3://` needs `s3fs`, `gs://` `gcsfs`, `http(s)://` `aiohttp` (the protocols fsspec knows).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence, Union

import fsspec
from braceexpand import braceexpand

GLOB_CHARS = "*?["
# how many files' existence is checked at once on a remote filesystem (one request each)
PARALLEL_REQUESTS = 16
Patterns = Union[str, Sequence[str]]


def protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _expand_one(pattern: str, suffixes: tuple[str, ...]) -> list[str]:
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(pattern))
    if any(c in path for c in GLOB_CHARS):
        found = fs.glob(path)
    elif "http" not in protocols(fs) and fs.isdir(path):  # (http's isdir would download the file)
        found = fs.find(path)  # a folder: its files at any depth, of the format's suffixes
    else:  # named as is: a local one as fsspec spells it (absolute), like the globs' matches
        return [pattern if is_remote(pattern) else path]
    return [p if not is_remote(pattern) else fs.unstrip_protocol(p) for p in found
            if p.lower().endswith(suffixes)]


def expand_files(patterns: Patterns, key: str, suffixes: tuple[str, ...], what: str) -> list[str]:
    """Sorted, de-duplicated files the patterns name; refuses when none match or a named one is missing."""
    patterns = [patterns] if isinstance(patterns, str) else [str(p) for p in patterns]
    expanded = [e for p in patterns for e in braceexpand(p)]
    files = sorted({f for e in expanded for f in _expand_one(e, suffixes)})
    if not files:
        raise FileNotFoundError(f"{key}={patterns!r} matches no {what} ({'/'.join(suffixes)})")
    missing = [f for f, ok in zip(files, exist_all(files)) if not ok]
    if missing:
        raise FileNotFoundError(f"{key}: {len(missing)} of {len(files)} {what} do not exist, e.g. "
                                f"{missing[:3]}; check the pattern ({patterns!r})")
    return files


def exist_all(urls: Sequence[str]) -> list[bool]:
    """One existence check per file, run in parallel: remote filesystems answer each with a request (a
    HEAD for http, whose `exists` would start downloading the file)."""
    def exists(url):
        fs, path = fsspec.core.url_to_fs(os.path.expanduser(url))
        try:
            fs.info(path)
        except FileNotFoundError:
            return False
        return True

    if not any(is_remote(u) for u in urls):
        return [exists(u) for u in urls]
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        return list(pool.map(exists, urls))


def open_stream(url: str):
    """A file opened for one pass from start to end. HTTP servers need not support range requests then
    (python's http.server does not), so http(s) files are read as a plain streamed GET."""
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(url))
    if "http" in protocols(fs):
        return fs.open(path, "rb", block_size=0)
    return fs.open(path, "rb")


def stem(url: str) -> str:
    """The file name without its extensions: 's3://b/cc12m/00042.tar.gz' -> '00042'."""
    return url.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]


def unique_stems(files: Sequence[str], key: str) -> list[str]:
    """Output shard names taken from the input files' names, so a shard keeps its name when other input
    files are added or left out; two inputs of the same name would write one shard, so they are refused."""
    names = [stem(f) for f in files]
    seen: dict[str, str] = {}
    for name, f in zip(names, files):
        if name in seen:
            raise ValueError(f"{key}: two input files are named {name!r} ({seen[name]} and {f}), and each "
                             "input file becomes the output shard of its name. Encode each folder into its "
                             "own output_dir (data.train_files takes a list of them)")
        seen[name] = f
    return names
