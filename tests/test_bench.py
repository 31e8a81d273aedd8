"""The benchmark runs end to end at tiny size: every section it can run here fills its rows with positive
numbers.

min-dalle runs when .venv-mindalle exists (scripts/min_dalle_env.sh); the JAX reference when .venv-ref does
(CI builds it). The tiny JAX step compiles with XLA's cheap backend passes, as scripts/reference_outputs.py
does: compile time dominates at this size and this test checks the plumbing, not the speed.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def _positive(result: dict, *keys: str) -> None:
    assert "error" not in result, result
    for key in keys:
        assert result[key] > 0, (key, result)


def test_bench_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS",
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    out = tmp_path / "bench.json"
    printed = bench.main(["--size", "tiny", "--steps", "4", "--batch-sizes", "1", "--dtypes", "float32",
                          "bfloat16", "--threads", "1", "--warmup", "0", "--train-steps", "1", "--json",
                          str(out)])
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(printed))
    _positive(result["floors"], "bandwidth_GBps", "gemm_float32_GFLOPs", "gemm_bfloat16_GFLOPs")

    rows = result["generation"]
    assert [(r["batch"], r["dtype"]) for r in rows] == [(1, "float32"), (1, "bfloat16")]
    for row in rows:
        _positive(row["ours"], "seconds", "seconds_per_image", "codes_per_s", "peak_rss_mb")
        _positive(row, "bytes_per_step", "flops", "floor_bandwidth_s", "floor_compute_s", "ours_over_floor",
                  "matmuls_s", "ours_over_matmuls")
    if bench._venv_python(".venv-mindalle").exists():
        fp32 = rows[0]
        _positive(fp32["mindalle"], "seconds", "peak_rss_mb")
        # the same network (min-dalle's LayerNorms all carry a scale, and its position table is `steps` long)
        assert abs(fp32["mindalle"]["params"] / fp32["ours"]["params"] - 1) < 0.01
        assert fp32["time_ours_over_mindalle"] > 0
    else:
        assert "skipped" in rows[0]["mindalle"]

    agreement = result["bf16_vs_fp32"]
    assert "error" not in agreement, agreement
    assert agreement["steps"] == 4 and 0 <= agreement["free_running_identical_codes"] <= 4
    assert 0 <= agreement["forced_agreement"] <= 1 and 0 <= agreement["free_running_agreement"] <= 1

    train = result["training"]
    _positive(train["ours"], "seconds_per_step", "tokens_per_s", "mfu")
    if bench._venv_python(".venv-ref").exists():
        _positive(train["jax"], "seconds_per_step", "tokens_per_s", "mfu")
        assert train["jax"]["params"] == train["ours"]["params"]
        assert train["time_ours_over_jax"] > 0
