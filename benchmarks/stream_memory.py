"""Peak memory of streaming one shard of the reference's layout: one row group of 131 072 rows (what its
encoding notebook wrote: `caption`, `encoding` as a list of 256 int64 codes of a 16384-code VQGAN).

    python benchmarks/stream_memory.py                      # the README's table: a whole epoch of the shard
    python benchmarks/stream_memory.py --rows 16384 --batches 200   # seconds

Each measurement runs in a fresh process: the shard's index and the tokenizer are built first, then the
peak resident set (Linux VmHWM, reset through /proc/self/clear_refs) is measured from there on, so the
figure is what reading costs, not the imports. Rows:

- `read_row_group` reads the row group whole and converts its codes, as the stream did before it read in
  slices: the floor a whole-group reader cannot go below;
- `StreamingDataModule` streams the shard (num_workers=0, so all of it is in this one process) through the
  shuffle buffer and tokenises every batch; with a buffer of 1 row the figure is what reading alone holds
  (pyarrow's decoder and allocator), and a larger buffer adds the rows it holds.

Memory does not depend on the machine's load, so these figures can be measured anywhere; rows/s (read,
shuffled and tokenised in one process) does, and wants a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MIB = 2**20
IMAGE_LENGTH, CODEBOOK = 256, 16384


def write_shard(path: Path, rows: int, seed: int = 0) -> None:
    """One row group, int64 codes, captions of a few words: the notebook's pandas `to_parquet` layout."""
    codes = np.random.default_rng(seed).integers(0, CODEBOOK, size=rows * IMAGE_LENGTH, dtype=np.int64)
    offsets = pa.array(np.arange(0, rows * IMAGE_LENGTH + 1, IMAGE_LENGTH, dtype=np.int32))
    table = pa.table({"caption": [f"a photo of a red square number {i} on a table" for i in range(rows)],
                      "encoding": pa.ListArray.from_arrays(offsets, pa.array(codes))})
    pq.write_table(table, path, row_group_size=rows)


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024 / MIB
    raise KeyError(key)


def _reset_peak() -> float:
    """Start counting the peak from now; the resident set now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def measure_whole(shard: Path) -> dict:
    from dalle_mini_pt.data.shards import check_codes, open_parquet

    pf = open_parquet(str(shard))
    base = _reset_peak()
    table = pf.read_row_group(0, columns=["caption", "encoding"])
    codes = check_codes(str(shard), table.column("encoding"), IMAGE_LENGTH, CODEBOOK)
    captions = table.column("caption").to_pylist()
    return {"rows": min(len(captions), len(codes)), "base_mib": base, "peak_mib": _status("VmHWM")}


def measure_stream(shard: Path, tokenizer: Path, shuffle_buffer: int, batch_size: int, batches: int) -> dict:
    from dalle_mini_pt.data.streaming import StreamingDataModule

    dm = StreamingDataModule(train_files=str(shard), tokenizer=str(tokenizer), text_length=64,
                             image_length=IMAGE_LENGTH, codebook_size=CODEBOOK, batch_size=batch_size,
                             shuffle_buffer=shuffle_buffer, num_workers=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    base, seen, start = _reset_peak(), 0, time.perf_counter()
    for i, batch in enumerate(loader):
        seen += len(batch["labels"])
        if batches and i + 1 >= batches:
            break
    return {"rows": seen, "base_mib": base, "peak_mib": _status("VmHWM"),
            "rows_per_s": seen / (time.perf_counter() - start)}


def _child(args: argparse.Namespace) -> dict:
    result = measure_whole(args.shard) if args.measure == "whole" else \
        measure_stream(args.shard, args.tokenizer, args.shuffle_buffers[0], args.batch_size, args.batches)
    print(json.dumps(result))
    return result


def _run_child(mode: str, shard: Path, tokenizer: Path, args: argparse.Namespace, buffer: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--measure", mode, "--shard", str(shard), "--tokenizer", str(tokenizer),
           "--shuffle-buffers", str(buffer), "--batch-size", str(args.batch_size),
           "--batches", str(args.batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{mode} measurement failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "above_mib": result["peak_mib"] - result["base_mib"]}


def table(args: argparse.Namespace) -> dict:
    from dalle_mini_pt.data.tiny_dataset import build

    with tempfile.TemporaryDirectory() as tmp:
        shard, tiny = Path(tmp) / "000.parquet", Path(tmp) / "tiny"
        write_shard(shard, args.rows)
        build(tiny, n_train=64, n_val=8)  # only its tokenizer: captions are tokenised as in training
        meta = pq.ParquetFile(shard).metadata
        whole = _run_child("whole", shard, tiny / "tokenizer", args)
        streams = {b: _run_child("stream", shard, tiny / "tokenizer", args, b) for b in args.shuffle_buffers}
    codes_mib = args.rows * IMAGE_LENGTH * 8 / MIB
    lines = [f"| one shard: {args.rows} rows in {meta.num_row_groups} row group ({codes_mib:.0f} MiB of "
             "int64 codes) | rows read | peak RSS above the start | rows/s |", "|---|---|---|---|",
             f"| `read_row_group`: the whole group at once | {whole['rows']} | "
             f"{whole['above_mib']:.0f} MiB | |"]
    for buffer, r in streams.items():
        lines.append(f"| `StreamingDataModule`, shuffle buffer {buffer}, batch {args.batch_size} | "
                     f"{r['rows']} | {r['above_mib']:.0f} MiB | {r['rows_per_s']:.0f} |")
    print("\n".join(lines))
    print(f"(the streaming process's whole peak RSS, imports included: "
          f"{max(r['peak_mib'] for r in streams.values()):.0f} MiB)")
    return {"rows": args.rows, "row_groups": meta.num_row_groups, "codes_int64_mib": codes_mib,
            "whole": whole, "stream": {str(b): r for b, r in streams.items()}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=131072)
    p.add_argument("--shuffle-buffers", type=int, nargs="+", default=[1, 5000],
                   help="one streaming row per size (1: no buffer, what reading alone holds)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=0, help="stop after this many batches (0: the whole epoch)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--measure", choices=["whole", "stream"], help=argparse.SUPPRESS)
    p.add_argument("--shard", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        return _child(args)
    out = table(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
