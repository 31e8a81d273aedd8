"""The benchmark's tables: markdown from the numbers `bench.py` gathers, and the README's GPU table."""

from __future__ import annotations

from typing import Optional

NOT_MEASURED = "not measured yet"
README_BATCHES = (1, 8, 32)
README_SIZES = ("mini", "mega")
README_DTYPES = ("float32", "bfloat16", "float16")


def status(result: dict) -> str:
    for key in ("seconds", "seconds_per_step"):
        if key in result:
            return f"{result[key]:.3g} s"
    if "forced_agreement" in result:
        return f"{result['forced_agreement']:.1%} of steps agree"
    return result.get("error") or result.get("skipped", "?")


def _cell(result: Optional[dict], key: str, spec: str = ".3g") -> str:
    if result and key in result:
        return format(result[key], spec)
    return "n/a" if result and ("error" in result or "skipped" in result) else "-"


def generation_columns(device: str) -> list[tuple]:
    """(header, part of the row (None: the row itself), key, format)."""
    peak, memory = ("peak_gpu_mb", "GPU") if device == "cuda" else ("peak_rss_mb", "RSS")
    return [
        ("batch", None, "batch", "d"), ("dtype", None, "dtype", "s"), ("step", None, "step_mode", "s"),
        ("ours s/img", "ours", "seconds_per_image", ".3g"), ("ours codes/s", "ours", "codes_per_s", ".3g"),
        (f"ours peak {memory} MB", "ours", peak, ".0f"), ("min-dalle dtype", None, "mindalle_dtype", "s"),
        ("min-dalle s/img", "mindalle", "seconds_per_image", ".3g"),
        ("min-dalle codes/s", "mindalle", "codes_per_s", ".3g"),
        (f"min-dalle peak {memory} MB", "mindalle", peak, ".0f"),
        ("min-dalle ÷ ours", None, "mindalle_over_ours", ".2f"),
        ("floor bw s", None, "floor_bandwidth_s", ".3g"),
        ("floor compute s", None, "floor_compute_s", ".3g"), ("ours/floor", None, "ours_over_floor", ".2f"),
        ("min-dalle/floor", None, "mindalle_over_floor", ".1f"),
        *([("matmuls alone s", None, "matmuls_s", ".3g"), ("ours/matmuls", None, "ours_over_matmuls", ".2f")]
          if device == "cpu" else []),
    ]


def _graph_note(rows: list[dict]) -> list[str]:
    graphed = [r for r in rows if "captures_timed" in r.get("ours", {})
               and r["step_mode"].startswith("cuda_graph")]
    if not graphed:
        return []
    again = [f"batch {r['batch']} {r['dtype']} {r['step_mode']}" for r in graphed
             if r["ours"]["captures_timed"]]
    replays = sorted({r["ours"]["replays_timed"] for r in graphed})
    captures = "captured again in " + ", ".join(again) if again else "0 captures"
    return [f"- graph modes, timed run: {captures}; replays per run {replays}"]


def generation_table(rows: list[dict], device: str = "cpu") -> list[str]:
    columns = generation_columns(device)
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r.get(part) if part else r, key, spec) for _, part, key, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    notes = {f"{impl}: {status(r[impl])}" for r in rows for impl in ("ours", "mindalle")
             if impl in r and "seconds" not in r[impl]}
    return lines + [f"- n/a {n}" for n in sorted(notes)] + _graph_note(rows)


def training_table(rows: list[dict], device: str = "cpu") -> list[str]:
    memory, peak = ("GPU", "peak_gpu_mb") if device == "cuda" else ("RSS", "peak_rss_mb")
    lines = [f"Training steps, mean of {rows[0]['steps']} steps after the warm-up", "",
             f"| size | mode | precision | impl | params | batch | GFLOP/step | s/step | decoder tokens/s "
             f"| MFU | optimizer s | peak {memory} MB |", "|" + "---|" * 12]
    notes = []
    for t in rows:
        for impl in [i for i in ("ours", "jax") if i in t]:
            r = t[impl]
            cells = [t["size"], t["mode"], t["precision"], impl, _cell(r, "params", ".4g"), str(t["batch"]),
                     f"{t['flops_per_step'] / 1e9:.4g}", _cell(r, "seconds_per_step"),
                     _cell(r, "tokens_per_s"), _cell(r, "mfu", ".1%"), _cell(r, "optimizer_seconds"),
                     _cell(r, peak, ".0f")]
            lines.append("| " + " | ".join(cells) + " |")
            if "seconds_per_step" not in r:
                notes.append(f"- n/a {t['size']} {t['mode']} {impl}: {status(r)}")
        if "time_ours_over_jax" in t:
            notes.append(f"- {t['size']}: time ours/JAX {t['time_ours_over_jax']:.2f}")
    return lines + notes


def agreement_lines(a: dict) -> list[str]:
    if "forced_agreement" not in a:
        return [f"bf16 vs fp32: n/a {status(a)}"]
    return [f"bf16 vs fp32, greedy (top_k=1), super-conditioned, {a['steps']} codes: bf16 picks fp32's "
            f"code on {a['forced_agreement']:.1%} of steps given fp32's codes so far; a free-running bf16 "
            f"sample keeps fp32's first {a['free_running_identical_codes']} codes "
            f"({a['free_running_agreement']:.1%} equal overall)"]


def markdown(result: dict) -> str:
    m = result["machine"]
    device = m.get("device", "cpu")
    where = m.get("gpu", "CUDA") if device == "cuda" else f"{m['cpu_count']} CPUs"
    lines = [f"DalleBart {m['size']}, {m['steps']} codes per image, {m['threads']} threads, "
             f"torch {m['torch']}, {where}", ""]
    if result.get("generation"):
        lines += generation_table(result["generation"], device) + [""]
    if result.get("bf16_vs_fp32"):
        lines += agreement_lines(result["bf16_vs_fp32"]) + [""]
    if result.get("floors"):
        lines += (["| floor | value |", "|---|---|"]
                  + [f"| {k} | {v:.3g} |" for k, v in result["floors"].items()])
        lines.append("")
    if result.get("training"):
        lines += training_table(result["training"], device)
    return "\n".join(lines)


# ---------------------------------------------------------------- the README's GPU table

def _fastest(results: list[dict], size: str, dtype: str, batch: int) -> Optional[dict]:
    rows = [r for res in results if res["machine"]["size"] == size and res["machine"].get("device") == "cuda"
            and res["machine"]["steps"] == 256 for r in res.get("generation", [])
            if r["dtype"] == dtype and r["batch"] == batch and "seconds" in r.get("ours", {})]
    return min(rows, key=lambda r: r["ours"]["seconds"], default=None)


def _cells(best: list[Optional[dict]], value) -> str:
    return " / ".join(value(r) if r else "–" for r in best) if any(best) else NOT_MEASURED


def readme_gpu_table(results: list[dict]) -> str:
    """One row per model and dtype, each cell the three batch sizes; from `bench.py --device cuda` JSON
    files (256 codes), the fastest step mode of each cell. No results: every cell says so."""
    gpus = sorted({res["machine"].get("gpu", "?") for res in results
                   if res["machine"].get("device") == "cuda"})
    batches = " / ".join(map(str, README_BATCHES))
    lines = [f"Measured on {', '.join(gpus)}" if gpus else "Not measured yet: no GPU run so far", "",
             f"| model | dtype | s/image at {batches} images | peak GPU memory, GB | images/s ÷ min-dalle "
             f"float16's | fastest step mode |", "|---|---|---|---|---|---|"]
    for size in README_SIZES:
        for dtype in README_DTYPES:
            best = [_fastest(results, size, dtype, b) for b in README_BATCHES]
            lines.append(" | ".join([
                f"| {size}", dtype,
                _cells(best, lambda r: f"{r['ours']['seconds_per_image']:.3g}"),
                _cells(best, lambda r: f"{r['ours']['peak_gpu_mb'] / 1024:.3g}"),
                _cells(best, lambda r: f"{r['mindalle_over_ours']:.2f}×" if "mindalle_over_ours" in r
                       else "–"),
                _cells(best, lambda r: r["step_mode"]) + " |"]))
    return "\n".join(lines)
