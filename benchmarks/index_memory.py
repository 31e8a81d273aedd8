"""Memory of the encoder's item index at DALL·E mini's scale: 15 M items listed into the columnar
`PathIndex` that `FolderSource` keeps, its bytes per item and the process's peak RSS, and how much of it
two forked DataLoader workers copy when they read every item (against a Python list of the same paths).

    python benchmarks/index_memory.py                          # 15 M items, compared with a 1 M-item list
    python benchmarks/index_memory.py --items 200000 --compare-items 100000   # a quick check

The paths are img2dataset's (`00042/000420017.jpg`, 10 000 per folder), generated in the order the folder
walk yields them: the filesystem is not listed (45 M files), the index is built by the same code. Counts
(bytes, RSS) do not depend on machine load. Goals: <= 64 bytes per item, <= 1.5 GB peak RSS, and workers
that copy nothing of the index.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dalle_mini_pt.data.item_index import PathIndex  # noqa: E402

MB = 2**20


def img2dataset_paths(n: int, per_folder: int):
    return (f"{i // per_folder:05d}/{i:09d}.jpg" for i in range(n))


def private_bytes() -> int:
    """This process's pages no other process shares (what a fork has copied or allocated)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) * 1024 for k in ("Private_Clean", "Private_Dirty"))


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ReadEverything(Dataset):
    """Worker w reads items w, w + W, ... of its half: every path, as the encoder's workers read them."""

    def __init__(self, index, workers: int):
        self.index, self.workers = index, workers

    def __len__(self) -> int:
        return self.workers

    def __getitem__(self, w: int):
        before = private_bytes()
        n = len(self.index)
        part = range(w * n // self.workers, (w + 1) * n // self.workers)
        if isinstance(self.index, PathIndex):  # every byte of the half's buffers, then some items
            half = self.index.paths.slice(part.start, len(part))
            chars = sum(int(np.frombuffer(b, np.uint8).sum()) for c in half.chunks for b in c.buffers() if b)
            chars += sum(len(self.index[i]) for i in part[::97])
        else:
            chars = sum(len(self.index[i]) for i in part)
        return w, (private_bytes() - before) / MB, chars


def worker_growth(index, workers: int = 2) -> list[float]:
    """What each worker copied. The parent's other Python objects are frozen first: a worker's garbage
    collector would otherwise touch (and so copy) every one of them, whatever the index is."""
    gc.collect()
    gc.freeze()
    try:
        loader = DataLoader(ReadEverything(index, workers), batch_size=None, num_workers=workers)
        return [growth for _, growth, _ in sorted(loader, key=lambda r: r[0])]
    finally:
        gc.unfreeze()


def row(name: str, n: int, nbytes: int, peak: str, growth: list[float]) -> str:
    return (f"| {name} | {n:,} | {nbytes / n:.1f} | {nbytes / MB:.0f} | {peak} | "
            f"{', '.join(f'{g:.1f}' for g in growth)} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=15_000_000)
    parser.add_argument("--per-folder", type=int, default=10_000)
    parser.add_argument("--compare-items", type=int, default=1_000_000,
                        help="items of the Python-list comparison (0: none)")
    args = parser.parse_args(argv)
    start, rss_before = peak_rss(), rss()
    index = PathIndex(img2dataset_paths(args.items, args.per_folder))
    built, held = peak_rss(), rss() - rss_before
    columnar = row("PathIndex (Arrow strings)", len(index), index.nbytes, f"{built / MB:.0f}",
                   worker_growth(index))
    del index
    print(f"\nindex of {args.items:,} img2dataset paths; peak RSS before building {start / MB:.0f} MB; "
          f"RSS grew by {held / MB:.0f} MB building it ({held / max(args.items, 1):.1f} bytes/item)")
    print("| index | items | bytes/item | index MB | peak RSS MB | MB each worker copied reading all |")
    print("|---|---|---|---|---|---|")
    print(columnar)
    if args.compare_items:
        paths = list(img2dataset_paths(args.compare_items, args.per_folder))
        size = sys.getsizeof(paths) + sum(sys.getsizeof(p) for p in paths)
        print(row("Python list of str", len(paths), size, "-", worker_growth(paths)))
    print(f"goals: <= 64 bytes/item, peak RSS <= 1536 MB ({built / MB:.0f} MB), workers copy ~0 MB")


if __name__ == "__main__":
    main()
