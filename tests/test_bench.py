"""The benchmark runs end to end at tiny size: every section it can run here fills its rows with positive
numbers. On a CUDA device (skipped elsewhere) the same at tiny size with `--device cuda`, every dtype and
the graph step modes, which must not capture again in the timed run.

min-dalle runs when .venv-mindalle exists (scripts/min_dalle_env.sh) or min_dalle imports; the JAX reference
when .venv-ref does (CI builds it). The tiny JAX step compiles with XLA's cheap backend passes, as
scripts/reference_outputs.py does: compile time dominates at this size and this test checks the plumbing,
not the speed. The README's computed memory table and its GPU table are what the code prints.
"""

import json
from pathlib import Path

import bench  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import bench_report
import cpu_choices
import generation_memory
import pytest
import torch

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _positive(result: dict, *keys: str) -> None:
    assert "error" not in result, result
    for key in keys:
        assert result[key] > 0, (key, result)


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "bench.json"
    printed = bench.main(["--size", "tiny", "--steps", "4", "--warmup", "0", "--train-steps", "1",
                          "--json", str(out), *args])
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(printed))
    return result


def _check_min_dalle(rows, ours_dtype="float32"):
    row = next(r for r in rows if r["dtype"] == ours_dtype)
    if bench._min_dalle_python():
        _positive(row["mindalle"], "seconds")
        # the same network (min-dalle's LayerNorms all carry a scale, and its position table is `steps` long)
        assert abs(row["mindalle"]["params"] / row["ours"]["params"] - 1) < 0.01
        assert row["mindalle_over_ours"] > 0
    else:
        assert "skipped" in row["mindalle"]


@pytest.mark.slow  # child processes per row, min-dalle's and the JAX reference's among them
def test_bench_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS",
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    # batch 2 is no square: min-dalle's loop still draws it (min_dalle_runner._ImageCount)
    result = _run(tmp_path, "--batch-sizes", "2", "--dtypes", "float32", "bfloat16", "--step-modes", "auto",
                  "static", "--threads", "1")
    _positive(result["floors"], "bandwidth_GBps", "gemm_float32_GFLOPs", "gemm_bfloat16_GFLOPs")

    rows = result["generation"]
    assert [(r["batch"], r["dtype"], r["step_mode"]) for r in rows] == [
        (2, "float32", "auto"), (2, "float32", "static"), (2, "bfloat16", "auto"), (2, "bfloat16", "static")]
    for row in rows:
        _positive(row["ours"], "seconds", "seconds_per_image", "codes_per_s", "peak_rss_mb")
        _positive(row, "bytes_per_step", "cache_bytes_per_step", "flops", "floor_bandwidth_s",
                  "floor_compute_s", "ours_over_floor", "matmuls_s", "ours_over_matmuls")
        assert row["mindalle_dtype"] == row["dtype"]  # on the CPU each dtype against its own
    _check_min_dalle(rows)
    assert rows[0]["mindalle"] == rows[1]["mindalle"]  # run once per batch and dtype, whatever the step

    agreement = result["bf16_vs_fp32"]
    assert "error" not in agreement, agreement
    assert agreement["steps"] == 4 and 0 <= agreement["free_running_identical_codes"] <= 4
    assert 0 <= agreement["forced_agreement"] <= 1 and 0 <= agreement["free_running_agreement"] <= 1

    [train] = result["training"]
    assert (train["size"], train["mode"], train["precision"]) == ("tiny", "eager", "32")
    _positive(train["ours"], "seconds_per_step", "tokens_per_s", "mfu", "optimizer_seconds")
    if bench._venv_python(".venv-ref").exists():
        _positive(train["jax"], "seconds_per_step", "tokens_per_s", "mfu")
        assert train["jax"]["params"] == train["ours"]["params"]
        assert train["time_ours_over_jax"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_tiny_cuda(tmp_path):
    result = _run(tmp_path, "--device", "cuda", "--batch-sizes", "2", "--dtypes", "float32", "bfloat16",
                  "float16", "--step-modes", "dynamic", "cuda_graph", "--warmup", "1", "--sections",
                  "generate", "mindalle", "floors", "train")
    _positive(result["floors"], "copy_GBps", "gemm_float32_GFLOPs", "gemm_bfloat16_GFLOPs",
              "gemm_float16_GFLOPs")
    rows = result["generation"]
    assert len(rows) == 3 * 2
    for row in rows:
        _positive(row["ours"], "seconds", "peak_gpu_mb")
        assert row["mindalle_dtype"] == "float16"
        if row["step_mode"] == "cuda_graph":  # captured in the warm-up, replayed in every timed step
            assert (row["ours"]["captures_timed"], row["ours"]["replays_timed"]) == (0, 4)
    _check_min_dalle(rows, "float16")
    for train in result["training"]:
        assert train["precision"] == "bf16-mixed"
        _positive(train["ours"], "seconds_per_step", "mfu", "peak_gpu_mb")
    assert "| tiny |" not in bench_report.readme_gpu_table([result])  # the README table is mini and mega


def test_readme_tables_are_the_codes():
    assert generation_memory.markdown() in README
    assert bench_report.readme_gpu_table([]) in README


def test_readme_gpu_table_takes_the_fastest_mode():
    rows = [{"batch": 8, "dtype": "bfloat16", "step_mode": mode, "mindalle_over_ours": speedup,
             "ours": {"seconds": 8 * s, "seconds_per_image": s, "peak_gpu_mb": 2048}}
            for mode, s, speedup in (("dynamic", 0.5, 2.0), ("cuda_graph", 0.1, 10.0))]
    result = {"machine": {"size": "mini", "device": "cuda", "gpu": "NVIDIA H200", "steps": 256},
              "generation": rows}
    line = next(ln for ln in bench_report.readme_gpu_table([result]).splitlines()
                if ln.startswith("| mini | bfloat16"))
    assert line == "| mini | bfloat16 | – / 0.1 / – | – / 2 / – | – / 10.00× / – | – / cuda_graph / – |"


def test_cpu_choices_tiny(tmp_path):
    """docs/cpu_decoding.md's command runs end to end at tiny size: every row of every dtype, both sides
    timed, the weights moved in the huge-page row where the kernel has huge pages."""
    from dalle_mini_pt.huge_pages import huge_pages_available

    out = tmp_path / "cpu_choices.json"
    printed = cpu_choices.main(["--size", "tiny", "--steps", "4", "--repeats", "1", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert results == json.loads(json.dumps(printed["results"]))
    assert [(r["dtype"], r["row"]) for r in results] == [
        (d, row) for d in ("float32", "bfloat16") for row in ("huge_pages", "linear", "linear", "cut_text")]
    for r in results:
        _positive(r, *(k for k in r if k.endswith("_s")))
    assert all((r["bytes_moved"] > 0) == huge_pages_available() for r in results if r["row"] == "huge_pages")
    assert {r["matmuls"] for r in results if r["row"] == "linear"} == {2 * 9 + 1}  # tiny: 2 GLU layers
