"""Speed of generation and training, against min-dalle, the JAX reference and the machine's own floors.

    python benchmarks/bench.py --json bench.json          # mini (0.44 B), every section, 256 codes
    python benchmarks/bench.py --size tiny --steps 8      # seconds: the CI smoke run

Sections (`--sections`, default all):
  generate  our sampler (`sampling.generate`), super-conditioned, random weights: s/image, codes/s, peak RSS
  mindalle  the same workload through min-dalle 0.4.11's own loop (benchmarks/min_dalle_runner.py in
            .venv-mindalle, built by scripts/min_dalle_env.sh)
  agreement bfloat16 against float32 on the same weights (rounded), greedy (top_k=1) and super-conditioned:
            the share of steps whose bf16 code is fp32's when both have fp32's codes so far (forced through
            the sampler's `noise`), and how long a free-running bf16 sample stays identical
  floors    matrix-vector bandwidth and GEMM FLOP/s measured here; each generation row's time over
            max(weight bytes read per step x steps / bandwidth, FLOPs / GEMM rate); and over the step's
            matmuls alone (the decoder's Linear modules on random weights, timed per step x steps), which
            splits ours/floor into the kernels' distance from the floor and everything else in a step
  train     one Adafactor step (forward + backward + update) of a DalleBart with 99 M non-embedding
            parameters: decoder tokens/s and MFU (model FLOPs / measured fp32 GEMM rate)
  train-jax the same step in the reference (dalle-mini 0.1.5, optax adafactor, jit) through
            benchmarks/reference_train_step.py in .venv-ref (scripts/reference_env.sh)
Every measured row runs in a fresh child process, so its peak RSS (VmHWM) is its own; all children get the
same thread count and CPU affinity. Models are built directly in the row's dtype, so an fp32 copy never
inflates a bf16 row's memory. With --steps N < 256 both samplers make N-code images (same weights, a cache
of N positions). Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
from bench_workloads import (
    DTYPES,
    ROOT,
    SIZES,
    TRAIN_SIZES,
    WORKERS,
    add_floors,
    generation_config,
    measure_floors,
    min_dalle_spec,
    model_config,
    reference_train_spec,
    train_flops,
)

SECTIONS = ("generate", "mindalle", "agreement", "floors", "train", "train-jax")


# ---------------------------------------------------------------- child processes

def run_child(cmd: list[str], threads: int, timeout: float = 3600) -> dict:
    """Run a workload in a fresh process pinned to `threads` CPUs; its last stdout line is a JSON dict."""
    cpus = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else []
    pin = (lambda: os.sched_setaffinity(0, cpus)) if 0 < len(cpus) < len(os.sched_getaffinity(0)) else None
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=pin,
                          cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def _worker(kind: str, spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]


# ---------------------------------------------------------------- orchestration

def _venv_python(name: str) -> Path:
    return ROOT / name / "bin" / "python"


def _status(result: dict) -> str:
    for key in ("seconds", "seconds_per_step"):
        if key in result:
            return f"{result[key]:.3g} s"
    if "forced_agreement" in result:
        return f"{result['forced_agreement']:.1%} of steps agree"
    return result.get("error") or result.get("skipped", "?")


def _with_rates(result: dict, batch: int, steps: int) -> dict:
    if "seconds" in result:
        result.update(seconds_per_image=result["seconds"] / batch,
                      codes_per_s=batch * steps / result["seconds"])
    return result


def _min_dalle(spec: dict, threads: int) -> dict:
    python = _venv_python(".venv-mindalle")
    if not python.exists():
        return {"skipped": ".venv-mindalle missing: build it with scripts/min_dalle_env.sh"}
    if math.isqrt(spec["batch"]) ** 2 != spec["batch"]:
        return {"skipped": "min-dalle draws grid_size**2 images: batch must be a square"}
    return run_child([str(python), str(ROOT / "benchmarks" / "min_dalle_runner.py"), json.dumps(spec)],
                     threads)


def generation_rows(args, floors: Optional[dict]) -> list[dict]:
    config = generation_config(args.size, args.steps)
    rows = []
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            spec = dict(size=args.size, batch=batch, dtype=dtype, steps=args.steps, threads=args.threads,
                        warmup=args.warmup)
            row = {"batch": batch, "dtype": dtype, "steps": args.steps}
            if "generate" in args.sections:
                row["ours"] = _with_rates(run_child(_worker("generate", spec), args.threads), batch,
                                          args.steps)
            if "mindalle" in args.sections:
                theirs = _min_dalle(min_dalle_spec(config, spec), args.threads)
                row["mindalle"] = _with_rates(theirs, batch, args.steps)
            if "seconds" in row.get("ours", {}) and "seconds" in row.get("mindalle", {}):
                row["time_ours_over_mindalle"] = row["ours"]["seconds"] / row["mindalle"]["seconds"]
            if floors:
                add_floors(row, floors, config)
            rows.append(row)
            done = [f"{impl} {_status(row[impl])}" for impl in ("ours", "mindalle") if impl in row]
            print(f"generation batch {batch} {dtype}: {', '.join(done)}", file=sys.stderr)
    return rows


def training_rows(args, floors: Optional[dict]) -> dict:
    config = model_config(**TRAIN_SIZES[args.size])
    spec = dict(size=args.size, batch=args.train_batch, steps=args.train_steps, warmup=1,
                threads=args.threads)
    out = {"batch": args.train_batch, "steps": args.train_steps,
           "flops_per_step": train_flops(config, spec["batch"]),
           "decoder_tokens_per_step": args.train_batch * config.image_length}
    if "train" in args.sections:
        out["ours"] = run_child(_worker("train", spec), args.threads)
    if "train-jax" in args.sections:
        python, script = _venv_python(".venv-ref"), ROOT / "benchmarks" / "reference_train_step.py"
        out["jax"] = (run_child([str(python), str(script), json.dumps(reference_train_spec(config, spec))],
                                args.threads) if python.exists()
                      else {"skipped": ".venv-ref missing: build it with scripts/reference_env.sh"})
    for impl in ("ours", "jax"):
        r = out.get(impl, {})
        if "seconds_per_step" in r:
            r["tokens_per_s"] = out["decoder_tokens_per_step"] / r["seconds_per_step"]
            if floors:
                r["mfu"] = (out["flops_per_step"] / r["seconds_per_step"]
                            / (floors["gemm_float32_GFLOPs"] * 1e9))
        if r:
            print(f"training {impl}: {_status(r)} per step", file=sys.stderr)
    if "tokens_per_s" in out.get("ours", {}) and "tokens_per_s" in out.get("jax", {}):
        out["time_ours_over_jax"] = out["ours"]["seconds_per_step"] / out["jax"]["seconds_per_step"]
    return out


# ---------------------------------------------------------------- report

def _cell(result: Optional[dict], key: str, spec: str = ".3g") -> str:
    if result and key in result:
        return format(result[key], spec)
    return "n/a" if result and ("error" in result or "skipped" in result) else "-"


GENERATION_COLUMNS = [  # header, part of the row (None: the row itself), key, format
    ("batch", None, "batch", "d"), ("dtype", None, "dtype", "s"),
    ("ours s/img", "ours", "seconds_per_image", ".3g"), ("ours codes/s", "ours", "codes_per_s", ".3g"),
    ("ours peak RSS MB", "ours", "peak_rss_mb", ".0f"),
    ("min-dalle s/img", "mindalle", "seconds_per_image", ".3g"),
    ("min-dalle codes/s", "mindalle", "codes_per_s", ".3g"),
    ("min-dalle peak RSS MB", "mindalle", "peak_rss_mb", ".0f"),
    ("time ours/min-dalle", None, "time_ours_over_mindalle", ".2f"),
    ("floor bw s", None, "floor_bandwidth_s", ".3g"), ("floor compute s", None, "floor_compute_s", ".3g"),
    ("ours/floor", None, "ours_over_floor", ".2f"), ("min-dalle/floor", None, "mindalle_over_floor", ".1f"),
    ("matmuls alone s", None, "matmuls_s", ".3g"), ("ours/matmuls", None, "ours_over_matmuls", ".2f"),
]


def generation_table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(c[0] for c in GENERATION_COLUMNS) + " |",
             "|" + "---|" * len(GENERATION_COLUMNS)]
    for r in rows:
        cells = [_cell(r.get(part) if part else r, key, spec) for _, part, key, spec in GENERATION_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = {f"{impl}: {_status(r[impl])}" for r in rows for impl in ("ours", "mindalle")
             if impl in r and "seconds" not in r[impl]}
    return lines + [f"- n/a {n}" for n in sorted(notes)]


def training_table(t: dict) -> list[str]:
    lines = [f"Training step, batch {t['batch']}, {t['decoder_tokens_per_step']} decoder tokens, "
             f"{t['flops_per_step'] / 1e9:.3g} GFLOP; mean of {t['steps']} steps after 1 warm-up", "",
             "| impl | params | s/step | decoder tokens/s | MFU | peak RSS MB |", "|---|---|---|---|---|---|"]
    for impl in [i for i in ("ours", "jax") if i in t]:
        r = t[impl]
        lines.append(f"| {impl} | {_cell(r, 'params', '.4g')} | {_cell(r, 'seconds_per_step')} | "
                     f"{_cell(r, 'tokens_per_s')} | {_cell(r, 'mfu', '.1%')} | "
                     f"{_cell(r, 'peak_rss_mb', '.0f')} |")
        if "seconds_per_step" not in r:
            lines.append(f"- n/a {impl}: {_status(r)}")
    return lines + ["", f"time ours/JAX: {_cell(t, 'time_ours_over_jax', '.2f')}"]


def agreement_lines(a: dict) -> list[str]:
    if "forced_agreement" not in a:
        return [f"bf16 vs fp32: n/a {_status(a)}"]
    return [f"bf16 vs fp32, greedy (top_k=1), super-conditioned, {a['steps']} codes: bf16 picks fp32's "
            f"code on {a['forced_agreement']:.1%} of steps given fp32's codes so far; a free-running bf16 "
            f"sample keeps fp32's first {a['free_running_identical_codes']} codes "
            f"({a['free_running_agreement']:.1%} equal overall)"]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"DalleBart {m['size']}, {m['steps']} codes per image, {m['threads']} threads, "
             f"torch {m['torch']}, {m['cpu_count']} CPUs", ""]
    if result.get("generation"):
        lines += generation_table(result["generation"]) + [""]
    if result.get("bf16_vs_fp32"):
        lines += agreement_lines(result["bf16_vs_fp32"]) + [""]
    if result.get("floors"):
        lines += (["| floor | value |", "|---|---|"]
                  + [f"| {k} | {v:.3g} |" for k, v in result["floors"].items()])
        lines.append("")
    if result.get("training"):
        lines += training_table(result["training"])
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--size", choices=sorted(SIZES), default="mini")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="images per prompt")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=256, help="codes per image to time (decode steps)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations before the timed one, per row")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--train-batch", type=int, default=None, help="default: 4 (mini), 2 (tiny)")
    p.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps, after one warm-up")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.steps <= 256:
        p.error("--steps must be between 1 and 256")
    args.train_batch = args.train_batch or (4 if args.size == "mini" else 2)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:  # a child process: one row, printed as a JSON line
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return {}
    torch.set_num_threads(args.threads)
    result = {"machine": {"size": args.size, "steps": args.steps, "threads": args.threads,
                          "torch": torch.__version__, "cpu_count": os.cpu_count()}}
    floors = result["floors"] = measure_floors(args.size) if "floors" in args.sections else None
    if {"generate", "mindalle"} & set(args.sections):
        result["generation"] = generation_rows(args, floors)
    if "agreement" in args.sections:
        spec = dict(size=args.size, steps=args.steps, threads=args.threads)
        result["bf16_vs_fp32"] = run_child(_worker("agreement", spec), args.threads)
        print(f"bf16 vs fp32: {_status(result['bf16_vs_fp32'])}", file=sys.stderr)
    if {"train", "train-jax"} & set(args.sections):
        result["training"] = training_rows(args, floors)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

