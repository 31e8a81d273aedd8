"""The item index of a folder source: every image's relative path in one Arrow string column.

A Python list of path strings costs about 80 bytes an item and, worse, every read of an item touches its
object's reference count, so each forked DataLoader worker ends up with its own copy of every page it read.
An Arrow string array is two flat buffers (the UTF-8 bytes and int32 offsets: the path's length plus 4 bytes
an item); reading it writes nothing, so forked workers keep sharing the parent's pages.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

# paths per Arrow chunk: big enough that the per-chunk overhead is nothing, small enough that the Python
# strings of one chunk are a few MB while it is built
CHUNK = 65536


def sorted_walk(root: str, suffixes: tuple[str, ...]) -> Iterator[str]:
    """Paths relative to `root` of the files whose names end in one of `suffixes`, in exactly the order
    `sorted()` puts the full relative paths, read one directory at a time (nothing holds the whole tree).
    A folder sorts as its name plus '/', which is where its files fall in the sorted full paths."""
    def entries(rel: str) -> list[tuple[str, bool]]:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            return sorted((e.name + "/" if e.is_dir() else e.name, e.is_dir()) for e in it)

    stack, prefixes = [iter(entries(""))], [""]
    while stack:
        for name, is_dir in stack[-1]:
            path = prefixes[-1] + name
            if is_dir:
                stack.append(iter(entries(path)))
                prefixes.append(path)
                break
            if name.lower().endswith(suffixes):
                yield path
        else:
            stack.pop()
            prefixes.pop()


def string_array(strings: list[str]) -> pa.StringArray:
    """Arrow strings from buffers of exactly their size: `pa.array` grows its buffers while it converts,
    and the allocator keeps what it gave back (2.4x the index's size in RSS at 5 M paths, against 1.2x)."""
    encoded = [s.encode("utf8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded)))


class PathIndex:
    """Item i -> its path string; built from any iterable of paths without holding them all as objects."""

    def __init__(self, paths: Iterable[str]):
        chunks, buf = [], []
        for path in paths:
            buf.append(path)
            if len(buf) == CHUNK:
                chunks.append(string_array(buf))
                buf = []
        if buf or not chunks:
            chunks.append(string_array(buf))
        self.paths = pa.chunked_array(chunks, pa.string())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return self.paths[i].as_py()

    @property
    def nbytes(self) -> int:
        """Bytes the index holds: the paths' UTF-8 bytes and their offsets."""
        return self.paths.get_total_buffer_size()
