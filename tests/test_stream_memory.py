"""benchmarks/stream_memory.py end to end at a small size: it prints its table, and streaming a one-row-group
shard peaks far below reading the group whole. The README quotes the table the full run prints."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
import stream_memory  # benchmarks/ is on pytest's pythonpath (pyproject.toml)


@pytest.mark.slow
def test_the_row_group_memory_benchmark_prints_its_table(capsys):
    out = stream_memory.main(["--rows", "32768", "--batches", "300", "--shuffle-buffers", "1", "500"])
    printed = capsys.readouterr().out
    assert "| `read_row_group`: the whole group at once | 32768 |" in printed
    assert out["row_groups"] == 1 and out["whole"]["rows"] == 32768
    streams = out["stream"].values()
    assert all(r["rows"] == 300 * 8 and r["rows_per_s"] > 0 for r in streams)
    # the whole group holds 64 MiB of int64 codes (and pyarrow's copies of them); a slice holds 2 MiB
    assert all(0 < r["above_mib"] < out["whole"]["above_mib"] / 2 for r in streams)
    readme = (ROOT / "README.md").read_text()
    assert "| one shard: 131072 rows in 1 row group (256 MiB of int64 codes) | rows read |" in readme
