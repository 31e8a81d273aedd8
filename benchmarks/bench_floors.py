"""The machine's floors, measured in the calling process, and each generation row's distance from them.

CPU: matrix-vector bandwidth (a 1 GiB matrix at mini size, bigger than any last-level cache) and GEMM
FLOP/s per dtype; plus, per row, the decoding step's matmuls alone through the decoder's own Linear modules.
CUDA: device-to-device copy bandwidth (bytes read plus bytes written, as HBM moves them) and GEMM FLOP/s per
dtype (float32 without TF32, as the float32 rows run), timed with CUDA events, median of the repeats.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from bench_workloads import (
    DTYPES,
    cache_bytes_per_step,
    decode_step_bytes,
    default_dtype,
    generation_flops,
)

FLOOR_SHAPES = {"cpu": {"mini": dict(matvec=(16384, 16384), gemm=2048), "tiny": dict(matvec=(2048, 4096),
                                                                                         gemm=512)},
                # 1 GiB copies are 20x the H200's 60 MB L2; 8192^3 products fill its 132 SMs
                "cuda": {"mini": dict(copy=1 << 28, gemm=8192), "tiny": dict(copy=1 << 24, gemm=1024)}}


def best_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _cuda_median_time(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _shapes(size: str, device: str) -> dict:
    return FLOOR_SHAPES[device]["tiny" if size == "tiny" else "mini"]


def measure_floors(size: str, device: str = "cpu") -> dict:
    return _cuda_floors(_shapes(size, device)) if device == "cuda" else _cpu_floors(_shapes(size, device))


def _cpu_floors(shapes: dict) -> dict:
    from dalle_mini_pt.huge_pages import on_huge_pages  # where loading a pipeline puts weights

    (rows, cols), n = shapes["matvec"], shapes["gemm"]
    w, x = torch.empty(rows, cols).uniform_(-1, 1), torch.empty(cols).uniform_(-1, 1)
    w = on_huge_pages(w)
    out = {"matvec_float32_GBps": w.nbytes / best_time(lambda: torch.mv(w, x), 5) / 1e9}
    for name, dtype in DTYPES.items():
        if dtype is torch.float16:
            continue  # no fast float16 kernels on most CPUs: the bench does not time float16 there
        # nn.Linear on 2 rows: a batch-1 super-conditioned step
        wd, xd = (w if dtype is w.dtype else on_huge_pages(w.to(dtype)),
                  x.to(dtype).expand(2, cols).contiguous())
        out[f"linear2_{name}_GBps"] = (wd.nbytes / best_time(lambda: torch.nn.functional.linear(xd, wd), 5)
                                       / 1e9)
        a, b = torch.empty(n, n, dtype=dtype).uniform_(-1, 1), torch.empty(n, n, dtype=dtype).uniform_(-1, 1)
        out[f"gemm_{name}_GFLOPs"] = 2 * n ** 3 / best_time(lambda: a @ b, 3) / 1e9
    out["bandwidth_GBps"] = max(out["matvec_float32_GBps"], out["linear2_float32_GBps"])
    return out


def _cuda_floors(shapes: dict) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False  # the default; the float32 rows run without it
    # random data, never zeros: a product of zeros can run faster than real data (docs/gpu.md)
    out = {"copy_GBps": _cuda_copy_GBps(shapes["copy"])}
    n = shapes["gemm"]
    for name, dtype in DTYPES.items():
        a, b = (torch.empty(n, n, dtype=dtype, device="cuda").uniform_(-1, 1) for _ in range(2))
        out[f"gemm_{name}_GFLOPs"] = 2 * n ** 3 / _cuda_median_time(lambda: a @ b, 10) / 1e9
    out["bandwidth_GBps"] = out["copy_GBps"]
    out["gpu"] = torch.cuda.get_device_name()
    return out


def _cuda_copy_GBps(numel: int) -> float:
    src = torch.empty(numel, device="cuda").uniform_(-1, 1)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _cuda_median_time(lambda: dst.copy_(src), 20) / 1e9


def step_matmul_seconds(config, dtype: str, batch: int) -> float:
    """One super-conditioned decoding step's matmuls alone, through the decoder's own Linear modules on
    weights placed as loading a pipeline places them (CPU): what a step built on these kernels cannot beat."""
    from dalle_mini_pt.huge_pages import move_to_huge_pages
    from dalle_mini_pt.model import ImageTokenDecoder

    with torch.device("meta"), default_dtype(DTYPES[dtype]):
        decoder = ImageTokenDecoder(config)
    decoder.to_empty(device="cpu")
    with torch.no_grad():
        for p in decoder.parameters():
            p.uniform_(-0.02, 0.02)  # not the garbage of empty memory: denormals would slow float32 down
    move_to_huge_pages(decoder)
    rows = 2 * batch  # conditional and unconditional; the lm_head runs after their mix, on `batch`
    calls = [(m, torch.randn(rows, m.in_features, dtype=DTYPES[dtype])) for m in step_linears(decoder)]
    calls.append((decoder.lm_head, torch.randn(batch, config.d_model, dtype=DTYPES[dtype])))
    with torch.inference_mode():
        return best_time(lambda: [m(x) for m, x in calls], 5)


def step_linears(decoder) -> list:
    """The Linear modules a decoding step runs, the lm_head left out (the cross-attention K/V are projected
    once per prompt, not per step)."""
    return [m for layer in decoder.layers for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
        layer.cross_attn.q_proj, layer.cross_attn.out_proj, *(getattr(layer.ffn, n) for n in ("fc0", "fc1")
                                                              if hasattr(layer.ffn, n)), layer.ffn.fc2)]


def add_floors(row: dict, floors: dict, config, device: str = "cpu") -> None:
    """The floor of a row: the larger of the bytes its steps must read (the weights, and the self-attention
    K/V written so far) over the bandwidth, and its useful FLOPs over the GEMM rate of its dtype."""
    steps, dtype, batch = row["steps"], row["dtype"], row["batch"]
    if device == "cpu":
        row["matmuls_s"] = step_matmul_seconds(config, dtype, batch) * steps
    row["bytes_per_step"] = decode_step_bytes(config, dtype)
    row["cache_bytes_per_step"] = cache_bytes_per_step(config, dtype, batch, steps)
    row["flops"] = generation_flops(config, batch, steps)
    row["floor_bandwidth_s"] = ((row["bytes_per_step"] + row["cache_bytes_per_step"]) * steps
                                / (floors["bandwidth_GBps"] * 1e9))
    row["floor_compute_s"] = row["flops"] / (floors[f"gemm_{dtype}_GFLOPs"] * 1e9)
    for impl in ("ours", "mindalle"):
        if impl == "mindalle" and row.get("mindalle_dtype", dtype) != dtype:
            continue  # another dtype's run: this row's floor is not its floor
        if "seconds" in row.get(impl, {}):
            row[f"{impl}_over_floor"] = row[impl]["seconds"] / max(row["floor_bandwidth_s"],
                                                                    row["floor_compute_s"])
            if "matmuls_s" in row:
                row[f"{impl}_over_matmuls"] = row[impl]["seconds"] / row["matmuls_s"]
