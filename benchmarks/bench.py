"""Speed of generation and training, against min-dalle, the JAX reference and the machine's own floors.

    python benchmarks/bench.py --json bench.json          # mini (0.44 B), every section, 256 codes
    python benchmarks/bench.py --size tiny --steps 8      # seconds: the CI smoke run
    python benchmarks/bench.py --device cuda --size mega --batch-sizes 1 8 32 \\
        --dtypes float32 bfloat16 float16 --step-modes cuda_graph   # a GPU (benchmarks/gpu_run.sh)

Sections (`--sections`, default all):
  generate  our sampler (`sampling.generate`), super-conditioned, random weights, in each `--step-modes`
            (GenerationConfig.step_mode): s/image, codes/s, peak memory (RSS on the CPU;
            torch.cuda.max_memory_allocated over the timed run on CUDA, weights included); on CUDA also
            the graph captures and replays counted during the timed run (0 captures: none after warm-up)
  mindalle  the same workload through min-dalle 0.4.11's own loop (benchmarks/min_dalle_runner.py; in
            .venv-mindalle, built by scripts/min_dalle_env.sh, or this Python where min_dalle imports), in
            each `--mindalle-dtypes` (default: each row's dtype on the CPU, float16 on CUDA, min-dalle's
            fastest there); a row is compared with min-dalle in its own dtype where that was run, else in
            the first of these
  agreement bfloat16 against float32 on the same weights (rounded), greedy (top_k=1) and super-conditioned:
            the share of steps whose bf16 code is fp32's when both have fp32's codes so far (forced through
            the sampler's `noise`), and how long a free-running bf16 sample stays identical
  floors    measured here (bench_floors.py): CPU matrix-vector or CUDA copy bandwidth, and GEMM FLOP/s per
            dtype; each generation row's time over max(bytes read per step (weights, and the K/V written so
            far) x steps / bandwidth, FLOPs / GEMM rate); on the CPU also over the step's matmuls alone
  train     one Adafactor step (forward + backward + update) of each `--train-sizes` (100m: 99 M
            non-embedding parameters; mini; tiny) in `--train-precision` (32 on the CPU, bf16-mixed on
            CUDA) and each `--train-modes` (eager; compiled: torch.compile of the network): decoder
            tokens/s and MFU (model FLOPs / the measured GEMM rate of the precision's matmul dtype)
  train-jax the same step in the reference (dalle-mini 0.1.5, optax adafactor, jit) through
            benchmarks/reference_train_step.py in .venv-ref (scripts/reference_env.sh), for the first size
Every measured row runs in a fresh child process, so its peak memory is its own; all children get the same
thread count and CPU affinity. Models are built directly in the row's dtype on the row's device, so an fp32
copy never inflates a bf16 row's memory. With --steps N < 256 both samplers make N-code images (same
weights, a cache of N positions). Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
from bench_floors import add_floors, measure_floors
from bench_report import markdown, readme_gpu_table, status
from bench_workloads import (
    DTYPES,
    ROOT,
    SIZES,
    TRAIN_SIZES,
    WORKERS,
    generation_config,
    min_dalle_spec,
    model_config,
    reference_train_spec,
    train_flops,
)

from dalle_mini_pt.generation_config import STEP_MODES

SECTIONS = ("generate", "mindalle", "agreement", "floors", "train", "train-jax")


# ---------------------------------------------------------------- child processes

def run_child(cmd: list[str], threads: int, timeout: float = 3600) -> dict:
    """Run a workload in a fresh process pinned to `threads` CPUs; its last stdout line is a JSON dict."""
    cpus = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else []
    pin = (lambda: os.sched_setaffinity(0, cpus)) if 0 < len(cpus) < len(os.sched_getaffinity(0)) else None
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=pin,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def _worker(kind: str, spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]


def _venv_python(name: str) -> Path:
    return ROOT / name / "bin" / "python"


def _min_dalle_python() -> Optional[str]:
    if _venv_python(".venv-mindalle").exists():
        return str(_venv_python(".venv-mindalle"))
    return sys.executable if importlib.util.find_spec("min_dalle") else None  # e.g. carried wheels (GPU)


# ---------------------------------------------------------------- generation

def _with_rates(result: dict, batch: int, steps: int) -> dict:
    if "seconds" in result:
        result.update(seconds_per_image=result["seconds"] / batch,
                      codes_per_s=batch * steps / result["seconds"])
    return result


def _min_dalle(spec: dict, args) -> dict:
    python = _min_dalle_python()
    if python is None:
        return {"skipped": "min-dalle missing: build .venv-mindalle with scripts/min_dalle_env.sh"}
    script = str(ROOT / "benchmarks" / "min_dalle_runner.py")
    return run_child([python, script, json.dumps(spec)], args.threads, args.timeout)


def _spec(args, **row) -> dict:
    return dict(size=args.size, steps=args.steps, threads=args.threads, warmup=args.warmup,
                device=args.device, **row)


def _mindalle_for(args, config, batch: int, dtype: str, done: dict) -> tuple[str, dict]:
    """min-dalle at this batch in `dtype` if it is one of --mindalle-dtypes, else in the first of them;
    each (batch, dtype) is run once."""
    chosen = args.mindalle_dtypes or [dtype]
    theirs = dtype if dtype in chosen else chosen[0]
    if (batch, theirs) not in done:
        spec = min_dalle_spec(config, _spec(args, batch=batch, dtype=theirs))
        done[batch, theirs] = _with_rates(_min_dalle(spec, args), batch, args.steps)
        print(f"generation batch {batch} {theirs} min-dalle: {status(done[batch, theirs])}", file=sys.stderr)
    return theirs, done[batch, theirs]


def generation_rows(args, floors: Optional[dict]) -> list[dict]:
    config = generation_config(args.size, args.steps)
    rows, theirs = [], {}
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            for mode in args.step_modes:
                row = {"batch": batch, "dtype": dtype, "step_mode": mode, "steps": args.steps}
                if "generate" in args.sections:
                    spec = _spec(args, batch=batch, dtype=dtype, step_mode=mode)
                    row["ours"] = _with_rates(run_child(_worker("generate", spec), args.threads,
                                                        args.timeout), batch, args.steps)
                    print(f"generation batch {batch} {dtype} {mode}: {status(row['ours'])}", file=sys.stderr)
                if "mindalle" in args.sections:
                    row["mindalle_dtype"], row["mindalle"] = _mindalle_for(args, config, batch, dtype, theirs)
                ours, mindalle = row.get("ours", {}), row.get("mindalle", {})
                if "seconds" in ours and "seconds" in mindalle:
                    row["time_ours_over_mindalle"] = ours["seconds"] / mindalle["seconds"]
                    row["mindalle_over_ours"] = mindalle["seconds"] / ours["seconds"]
                if floors:
                    add_floors(row, floors, config, args.device)
                rows.append(row)
    return rows


# ---------------------------------------------------------------- training

def _training_row(args, size: str, mode: str, floors: Optional[dict], with_jax: bool) -> dict:
    config = model_config(**TRAIN_SIZES[size])
    spec = dict(size=size, batch=args.train_batch, steps=args.train_steps, warmup=args.train_warmup,
                threads=args.threads, device=args.device, precision=args.train_precision, mode=mode)
    out = {"size": size, "mode": mode, "precision": args.train_precision, "batch": args.train_batch,
           "steps": args.train_steps, "flops_per_step": train_flops(config, spec["batch"]),
           "decoder_tokens_per_step": args.train_batch * config.image_length}
    if "train" in args.sections:
        out["ours"] = run_child(_worker("train", spec), args.threads, args.timeout)
    if with_jax:
        python, script = _venv_python(".venv-ref"), ROOT / "benchmarks" / "reference_train_step.py"
        out["jax"] = (run_child([str(python), str(script), json.dumps(reference_train_spec(config, spec))],
                                args.threads, args.timeout) if python.exists()
                      else {"skipped": ".venv-ref missing: build it with scripts/reference_env.sh"})
    peak = "gemm_bfloat16_GFLOPs" if args.train_precision.startswith("bf16") else "gemm_float32_GFLOPs"
    for impl in ("ours", "jax"):
        r = out.get(impl, {})
        if "seconds_per_step" in r:
            r["tokens_per_s"] = out["decoder_tokens_per_step"] / r["seconds_per_step"]
            if floors:
                r["mfu"] = out["flops_per_step"] / r["seconds_per_step"] / (floors[peak] * 1e9)
        if r:
            print(f"training {size} {mode} {impl}: {status(r)} per step", file=sys.stderr)
    if "tokens_per_s" in out.get("ours", {}) and "tokens_per_s" in out.get("jax", {}):
        out["time_ours_over_jax"] = out["ours"]["seconds_per_step"] / out["jax"]["seconds_per_step"]
    return out


def training_rows(args, floors: Optional[dict]) -> list[dict]:
    rows = []
    for i, size in enumerate(args.train_sizes):
        for j, mode in enumerate(args.train_modes):
            with_jax = "train-jax" in args.sections and i == 0 and j == 0 and args.device == "cpu"
            rows.append(_training_row(args, size, mode, floors, with_jax))
    return rows


# ---------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", choices=SIZES, default="mini")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="images per prompt")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--step-modes", nargs="+", choices=STEP_MODES, default=["auto"])
    p.add_argument("--mindalle-dtypes", nargs="+", choices=list(DTYPES), default=None,
                   help="default: each row's dtype on the CPU, float16 on CUDA")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=256, help="codes per image to time (decode steps)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations before the timed one, per row")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--train-sizes", nargs="+", choices=list(TRAIN_SIZES), default=None,
                   help="default: 100m (tiny with --size tiny)")
    p.add_argument("--train-modes", nargs="+", choices=["eager", "compiled"], default=["eager"])
    p.add_argument("--train-precision", choices=["32", "bf16-mixed"], default=None,
                   help="default: 32 on the CPU, bf16-mixed on CUDA")
    p.add_argument("--train-batch", type=int, default=None, help="default: 4 (mini), 2 (tiny)")
    p.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps, after the warm-up")
    p.add_argument("--train-warmup", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600, help="seconds a child process may run")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--readme-table", type=Path, nargs="*", default=None, metavar="JSON",
                   help="print the README's GPU table from these bench JSON files (none: its empty form)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.steps <= 256:
        p.error("--steps must be between 1 and 256")
    if args.device == "cuda" and args.worker is None and args.readme_table is None:
        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device here")
    cuda = args.device == "cuda"
    args.train_batch = args.train_batch or (4 if args.size != "tiny" else 2)
    args.train_sizes = args.train_sizes or (["tiny"] if args.size == "tiny" else ["100m"])
    args.train_precision = args.train_precision or ("bf16-mixed" if cuda else "32")
    args.mindalle_dtypes = args.mindalle_dtypes or (["float16"] if cuda else None)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:  # a child process: one row, printed as a JSON line
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return {}
    if args.readme_table is not None:
        print(readme_gpu_table([json.loads(f.read_text()) for f in args.readme_table]))
        return {}
    torch.set_num_threads(args.threads)
    result = {"machine": {"size": args.size, "steps": args.steps, "threads": args.threads,
                          "torch": torch.__version__, "cpu_count": os.cpu_count(), "device": args.device}}
    floors = result["floors"] = measure_floors(args.size, args.device) if "floors" in args.sections else None
    if floors and "gpu" in floors:
        result["machine"]["gpu"] = floors.pop("gpu")
    if {"generate", "mindalle"} & set(args.sections):
        result["generation"] = generation_rows(args, floors)
    if "agreement" in args.sections:
        spec = dict(size=args.size, steps=args.steps, threads=args.threads, device=args.device)
        result["bf16_vs_fp32"] = run_child(_worker("agreement", spec), args.threads, args.timeout)
        print(f"bf16 vs fp32: {status(result['bf16_vs_fp32'])}", file=sys.stderr)
    if {"train", "train-jax"} & set(args.sections):
        result["training"] = training_rows(args, floors)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
