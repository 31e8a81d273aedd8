"""webdataset tar shards (img2dataset's `webdataset` output), local or at any fsspec URL, plain or compressed.

    input.format=tar input.path='gs://bucket/cc12m/{00000..01242}.tar'

Each tar is read once, from start to end, by one DataLoader worker: remote storage serves whole objects
well and a `.tar.gz` cannot be read any other way. So a tar is the unit of work and of resuming, and it
becomes the output shard of its own name (`00042.tar` -> `00042.parquet`); no item index is kept (a tar's
members are known only once it is read). Members are grouped into samples by webdataset's own rule (the
key is the path up to the first dot of the file name); a sample without an image member is not an item.
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence, Union

from webdataset.tariterators import group_by_keys, tar_file_expander

from .image_sources import IMAGE_EXTENSIONS, Sample, passthrough_fields
from .input_files import expand_files, open_stream, unique_stems

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


def tar_samples(url: str, stream) -> Iterator[dict]:
    """webdataset's samples ({'__key__', 'jpg', 'txt', ...}) of one opened tar stream; tarfile's stream mode
    ("r|*") recognises gzip, bzip2 and xz by their magic bytes."""
    return group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))


class TarSource:
    streamed = True  # see the module docstring: pieces are whole tars

    def __init__(self, paths: Union[str, Sequence[str]], passthrough: Sequence[str] = ()):
        self.tars = expand_files(paths, "input.path", TAR_SUFFIXES, "tar files")
        self.shard_names = unique_stems(self.tars, "input.path")
        self.passthrough = tuple(passthrough)

    def pieces(self) -> list[tuple[str, str]]:
        """(output shard name, the input it holds) per tar, in sorted order."""
        return list(zip(self.shard_names, self.tars))

    def stream(self, k: int) -> Iterator[tuple[str, Union[Sample, Exception]]]:
        """(item name, sample or the reason it cannot be had) for each image of tar k. A tar that cannot be
        opened or read to its end raises: the piece is then not written, and a rerun reads it again."""
        url = self.tars[k]
        with open_stream(url) as f:
            for sample in tar_samples(url, f):
                ext = next((e for e in IMAGE_KEYS if e in sample), None)
                if ext is None:
                    continue
                name = f"{url}:{sample['__key__']}.{ext}"
                try:
                    yield name, self._sample(sample, ext)
                except Exception as err:  # noqa: BLE001  (a bad caption or sidecar costs one item)
                    yield name, err

    def _sample(self, sample: dict, ext: str) -> Sample:
        key = sample["__key__"]
        if "txt" not in sample:
            raise ValueError(f"no caption member {key}.txt")
        caption = sample["txt"].decode("utf8").strip()
        meta = json.loads(sample["json"]) if "json" in sample else {}
        return Sample(str(meta.get("key") or key), sample[ext], caption,
                      passthrough_fields(meta, self.passthrough))
