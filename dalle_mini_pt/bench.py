"""Speed of generation and training, against min-dalle, the JAX reference and the machine's own floors.

    python -m dalle_mini_pt.bench --json bench.json          # mini (0.44 B), every section, 256 codes
    python -m dalle_mini_pt.bench --size tiny --steps 8      # seconds: the CI smoke run

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
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# mini is conf/model/dalle_mini.yaml as it stands; tiny keeps its vocabularies and lengths (min-dalle
# hard-codes 64 text tokens and 2**14 codes) and shrinks the layers
SIZES = {"mini": {}, "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)}
TRAIN_SIZES = {"mini": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                            decoder_attention_heads=12, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
               "tiny": SIZES["tiny"]}
# the matvec matrix is 1 GiB at mini size: bigger than any last-level cache
FLOOR_SHAPES = {"mini": dict(matvec=(16384, 16384), gemm=2048), "tiny": dict(matvec=(2048, 4096), gemm=512)}
SAMPLING = dict(top_k=256, temperature=1.0, condition_scale=16.0)  # min-dalle's defaults
PROMPT = [0, *range(100, 110), 2]  # <s> ten tokens </s>
UNCOND = [0, 2]  # the tokenised empty prompt
SECTIONS = ("generate", "mindalle", "agreement", "floors", "train", "train-jax")


def model_config(**overrides):
    from omegaconf import OmegaConf

    from .config import DalleBartConfig

    values = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "dalle_mini.yaml").net.config)
    values.pop("_target_")
    return DalleBartConfig(**{**values, **overrides})


def generation_config(size: str, steps: int):
    # the position table keeps its 256 rows; the cache and the loop follow `steps`
    return model_config(**SIZES[size], image_length=steps, image_positions=256)


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def padded(tokens: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.ones((1, length), dtype=torch.long)  # 1 is <pad>
    ids[0, :len(tokens)] = torch.tensor(tokens)
    return ids, (ids != 1).long()


# ---------------------------------------------------------------- work counts (floors and MFU)

def decode_step_bytes(config, dtype: str) -> int:
    """Weight bytes one cached decoding step must read: the decoder layers less the cross-attention K/V
    projections (their outputs are cached per prompt), the final LayerNorm and the lm_head."""
    from .model import ImageTokenDecoder

    with torch.device("meta"):
        decoder = ImageTokenDecoder(config)
    skip = ("embed.", ".cross_attn.k_proj.", ".cross_attn.v_proj.")
    numel = sum(p.numel() for n, p in decoder.named_parameters() if not any(s in n for s in skip))
    return numel * DTYPES[dtype].itemsize


def _layer_macs(config, part: str, tokens: int, keys: int) -> float:
    """Multiply-accumulates per token of one encoder or decoder layer, attention over `keys` included."""
    d, ffn = config.d_model, getattr(config, f"{part}_ffn_dim") * (3 if config.use_glu else 2) * config.d_model
    return tokens * (4 * d * d + ffn + 2 * keys * d)


def generation_flops(config, batch: int, steps: int) -> float:
    """Useful FLOPs of a super-conditioned generation: the encoder and the cross-attention K/V on the 2
    prompts, then `steps` cached steps for 2 * batch rows, attending over the t + 1 codes so far."""
    d, text, rows = config.d_model, config.max_text_length, 2 * batch
    macs = 2 * config.encoder_layers * _layer_macs(config, "encoder", text, text)
    macs += 2 * config.decoder_layers * text * 2 * d * d
    step = config.decoder_layers * (_layer_macs(config, "decoder", 1, text) + 2 * d * d) + d * config.image_rows
    macs += rows * steps * step + rows * config.decoder_layers * 2 * d * steps * (steps + 1) / 2
    return 2.0 * macs


def train_flops(config, batch: int) -> float:
    """Model FLOPs of a training step: 3 x forward, every matmul counted (embedding lookups are not)."""
    d, text, image = config.d_model, config.max_text_length, config.image_length
    fwd = config.encoder_layers * _layer_macs(config, "encoder", text, text)
    fwd += config.decoder_layers * (_layer_macs(config, "decoder", image, image + text)
                                    + 2 * d * d * (image + text))  # cross-attention q, out; k, v
    fwd += image * d * config.image_rows
    return 3 * 2.0 * batch * fwd


# ---------------------------------------------------------------- floors (in this process)

def _best_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_floors(size: str) -> dict:
    from .huge_pages import on_huge_pages  # where `generate` puts weights

    (rows, cols), n = FLOOR_SHAPES[size]["matvec"], FLOOR_SHAPES[size]["gemm"]
    w, x = torch.empty(rows, cols).uniform_(-1, 1), torch.empty(cols).uniform_(-1, 1)
    w = on_huge_pages(w)
    out = {"matvec_float32_GBps": w.nbytes / _best_time(lambda: torch.mv(w, x), 5) / 1e9}
    for name, dtype in DTYPES.items():  # nn.Linear on 2 rows: a batch-1 super-conditioned step
        wd, xd = w if dtype is w.dtype else on_huge_pages(w.to(dtype)), x.to(dtype).expand(2, cols).contiguous()
        out[f"linear2_{name}_GBps"] = wd.nbytes / _best_time(lambda: torch.nn.functional.linear(xd, wd), 5) / 1e9
        a, b = torch.empty(n, n, dtype=dtype).uniform_(-1, 1), torch.empty(n, n, dtype=dtype).uniform_(-1, 1)
        out[f"gemm_{name}_GFLOPs"] = 2 * n ** 3 / _best_time(lambda: a @ b, 3) / 1e9
    out["bandwidth_GBps"] = max(out["matvec_float32_GBps"], out["linear2_float32_GBps"])
    return out


def step_matmul_seconds(config, dtype: str, batch: int) -> float:
    """One super-conditioned decoding step's matmuls alone, through the decoder's own Linear modules on
    weights placed as `generate` places them: what a step built on these kernels cannot beat."""
    from .huge_pages import move_to_huge_pages
    from .model import ImageTokenDecoder

    with torch.device("meta"), default_dtype(DTYPES[dtype]):
        decoder = ImageTokenDecoder(config)
    decoder.to_empty(device="cpu")
    with torch.no_grad():
        for p in decoder.parameters():
            p.uniform_(-0.02, 0.02)  # not the garbage of empty memory: denormals would slow float32 down
    move_to_huge_pages(decoder)
    rows = 2 * batch  # conditional and unconditional; the lm_head runs after their mix, on `batch`
    linears = [m for layer in decoder.layers for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
        layer.cross_attn.q_proj, layer.cross_attn.out_proj, *(getattr(layer.ffn, n) for n in ("fc0", "fc1")
                                                              if hasattr(layer.ffn, n)), layer.ffn.fc2)]
    calls = [(m, torch.randn(rows, m.in_features, dtype=DTYPES[dtype])) for m in linears]
    calls.append((decoder.lm_head, torch.randn(batch, config.d_model, dtype=DTYPES[dtype])))
    with torch.inference_mode():
        return _best_time(lambda: [m(x) for m, x in calls], 5)


def add_floors(row: dict, floors: dict, config) -> None:
    steps, dtype = row["steps"], row["dtype"]
    row["matmuls_s"] = step_matmul_seconds(config, dtype, row["batch"]) * steps
    row["bytes_per_step"] = decode_step_bytes(config, dtype)
    row["flops"] = generation_flops(config, row["batch"], steps)
    row["floor_bandwidth_s"] = row["bytes_per_step"] * steps / (floors["bandwidth_GBps"] * 1e9)
    row["floor_compute_s"] = row["flops"] / (floors[f"gemm_{dtype}_GFLOPs"] * 1e9)
    for impl in ("ours", "mindalle"):
        if "seconds" in row.get(impl, {}):
            row[f"{impl}_over_floor"] = row[impl]["seconds"] / max(row["floor_bandwidth_s"],
                                                                    row["floor_compute_s"])
            row[f"{impl}_over_matmuls"] = row[impl]["seconds"] / row["matmuls_s"]


# ---------------------------------------------------------------- child-process workloads

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
    return [sys.executable, "-m", "dalle_mini_pt.bench", "--worker", kind, "--spec", json.dumps(spec)]


def generation_worker(spec: dict) -> dict:
    from .model import DalleBart
    from .sampling import generate

    torch.set_num_threads(spec["threads"])
    config = generation_config(spec["size"], spec["steps"])
    before_model = rss_mb("VmRSS")  # the imports' share of the peak
    torch.manual_seed(0)
    with default_dtype(DTYPES[spec["dtype"]]):
        model = DalleBart(config).eval()
    ids, mask = padded(PROMPT, config.max_text_length)
    uncond_ids, uncond_mask = padded(UNCOND, config.max_text_length)

    def run():
        return generate(model, ids, mask, num_images=spec["batch"], uncond_input_ids=uncond_ids,
                        uncond_attention_mask=uncond_mask, seed=0, **SAMPLING)

    for _ in range(spec["warmup"]):
        run()
    start = time.perf_counter()
    codes = run()
    seconds = time.perf_counter() - start
    assert codes.shape == (spec["batch"], spec["steps"])
    return {"seconds": seconds, "peak_rss_mb": rss_mb(), "rss_before_model_mb": before_model,
            "params": model.num_parameters()}


def agreement_worker(spec: dict) -> dict:
    """bf16 greedy codes against fp32's on the same weights, one super-conditioned image."""
    from .model import DalleBart
    from .sampling import generate

    torch.set_num_threads(spec["threads"])
    config = generation_config(spec["size"], spec["steps"])
    torch.manual_seed(0)
    model = DalleBart(config).eval()
    ids, mask = padded(PROMPT, config.max_text_length)
    uncond_ids, uncond_mask = padded(UNCOND, config.max_text_length)
    common = dict(uncond_input_ids=uncond_ids, uncond_attention_mask=uncond_mask, seed=0,
                  condition_scale=SAMPLING["condition_scale"])
    reference = generate(model, ids, mask, top_k=1, **common)[0]
    model.to(torch.bfloat16)
    free = generate(model, ids, mask, top_k=1, **common)[0]
    # infinite noise on fp32's code makes the sampler draw it, whatever the bf16 logits say
    noise = torch.zeros(config.image_length, 1, config.image_rows)
    noise[torch.arange(config.image_length), 0, reference] = float("inf")
    _, logits = generate(model, ids, mask, noise=noise, return_logits=True, **common)
    forced = logits[0, :, :config.codebook_size].argmax(-1)
    differs = (free != reference).nonzero()
    return {"steps": config.image_length, "forced_agreement": (forced == reference).float().mean().item(),
            "free_running_agreement": (free == reference).float().mean().item(),
            "free_running_identical_codes": int(differs[0]) if len(differs) else config.image_length}


def min_dalle_spec(config, spec: dict) -> dict:
    """Our config as min-dalle's constructor arguments, plus the workload."""
    common = dict(layer_count=config.decoder_layers, embed_count=config.d_model,
                  attention_head_count=config.decoder_attention_heads, glu_embed_count=config.decoder_ffn_dim)
    return {**spec, "prompt": PROMPT, "temperature": SAMPLING["temperature"], "top_k": SAMPLING["top_k"],
            "supercondition_factor": SAMPLING["condition_scale"],
            "encoder": dict(common, text_vocab_count=config.encoder_vocab_size,
                            text_token_count=config.max_text_length),
            "decoder": dict(common, image_vocab_count=config.image_vocab_size)}


def _adafactor_conf():
    from omegaconf import OmegaConf

    return OmegaConf.load(CONF / "optimizer" / "adafactor.yaml")


def training_worker(spec: dict) -> dict:
    """One optimizer step as Lightning takes it: the module's training_step, backward, the Hydra Adafactor."""
    import warnings

    from hydra.utils import instantiate

    from .lit_module import DalleMiniModule
    from .model import DalleBart

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = model_config(**TRAIN_SIZES[spec["size"]])
    module = DalleMiniModule(DalleBart(config), optimizer=instantiate(_adafactor_conf()))
    optimizer = module.configure_optimizers()
    ids = torch.randint(3, config.encoder_vocab_size, (spec["batch"], config.max_text_length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, config.codebook_size, (spec["batch"], config.image_length))}

    def step():
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()

    for _ in range(spec["warmup"]):
        step()
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    return {"seconds_per_step": (time.perf_counter() - start) / spec["steps"], "peak_rss_mb": rss_mb(),
            "params": module.net.num_parameters(), "package_flops": module.flops_per_batch}


def reference_train_spec(config, spec: dict) -> dict:
    """Our config as the reference's DalleBartConfig arguments (the same names), plus the workload."""
    keys = ("encoder_vocab_size", "image_vocab_size", "image_length", "max_text_length", "d_model",
            "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
            "encoder_ffn_dim", "decoder_ffn_dim", "activation_function", "ln_positions", "use_glu", "use_bias",
            "use_head_scale", "force_ln_scale", "use_final_ln_encoder", "use_final_ln_decoder", "init_std")
    model = {k: getattr(config, k) for k in keys}
    model.update(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, gradient_checkpointing=False)
    return {**spec, "config": model, "lr": _adafactor_conf().lr, "codebook_size": config.codebook_size}


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
        result.update(seconds_per_image=result["seconds"] / batch, codes_per_s=batch * steps / result["seconds"])
    return result


def _min_dalle(spec: dict, threads: int) -> dict:
    python = _venv_python(".venv-mindalle")
    if not python.exists():
        return {"skipped": ".venv-mindalle missing: build it with scripts/min_dalle_env.sh"}
    if math.isqrt(spec["batch"]) ** 2 != spec["batch"]:
        return {"skipped": "min-dalle draws grid_size**2 images: batch must be a square"}
    return run_child([str(python), str(ROOT / "benchmarks" / "min_dalle_runner.py"), json.dumps(spec)], threads)


def generation_rows(args, floors: Optional[dict]) -> list[dict]:
    config = generation_config(args.size, args.steps)
    rows = []
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            spec = dict(size=args.size, batch=batch, dtype=dtype, steps=args.steps, threads=args.threads,
                        warmup=args.warmup)
            row = {"batch": batch, "dtype": dtype, "steps": args.steps}
            if "generate" in args.sections:
                row["ours"] = _with_rates(run_child(_worker("generate", spec), args.threads), batch, args.steps)
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
    spec = dict(size=args.size, batch=args.train_batch, steps=args.train_steps, warmup=1, threads=args.threads)
    out = {"batch": args.train_batch, "steps": args.train_steps, "flops_per_step": train_flops(config, spec["batch"]),
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
                r["mfu"] = out["flops_per_step"] / r["seconds_per_step"] / (floors["gemm_float32_GFLOPs"] * 1e9)
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
    ("ours peak RSS MB", "ours", "peak_rss_mb", ".0f"), ("min-dalle s/img", "mindalle", "seconds_per_image", ".3g"),
    ("min-dalle codes/s", "mindalle", "codes_per_s", ".3g"),
    ("min-dalle peak RSS MB", "mindalle", "peak_rss_mb", ".0f"),
    ("time ours/min-dalle", None, "time_ours_over_mindalle", ".2f"),
    ("floor bw s", None, "floor_bandwidth_s", ".3g"), ("floor compute s", None, "floor_compute_s", ".3g"),
    ("ours/floor", None, "ours_over_floor", ".2f"), ("min-dalle/floor", None, "mindalle_over_floor", ".1f"),
    ("matmuls alone s", None, "matmuls_s", ".3g"), ("ours/matmuls", None, "ours_over_matmuls", ".2f"),
]


def generation_table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(c[0] for c in GENERATION_COLUMNS) + " |", "|" + "---|" * len(GENERATION_COLUMNS)]
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
                     f"{_cell(r, 'tokens_per_s')} | {_cell(r, 'mfu', '.1%')} | {_cell(r, 'peak_rss_mb', '.0f')} |")
        if "seconds_per_step" not in r:
            lines.append(f"- n/a {impl}: {_status(r)}")
    return lines + ["", f"time ours/JAX: {_cell(t, 'time_ours_over_jax', '.2f')}"]


def agreement_lines(a: dict) -> list[str]:
    if "forced_agreement" not in a:
        return [f"bf16 vs fp32: n/a {_status(a)}"]
    return [f"bf16 vs fp32, greedy (top_k=1), super-conditioned, {a['steps']} codes: bf16 picks fp32's code on "
            f"{a['forced_agreement']:.1%} of steps given fp32's codes so far; a free-running bf16 sample keeps "
            f"fp32's first {a['free_running_identical_codes']} codes ({a['free_running_agreement']:.1%} equal "
            "overall)"]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"DalleBart {m['size']}, {m['steps']} codes per image, {m['threads']} threads, torch {m['torch']}, "
             f"{m['cpu_count']} CPUs", ""]
    if result.get("generation"):
        lines += generation_table(result["generation"]) + [""]
    if result.get("bf16_vs_fp32"):
        lines += agreement_lines(result["bf16_vs_fp32"]) + [""]
    if result.get("floors"):
        lines += ["| floor | value |", "|---|---|"] + [f"| {k} | {v:.3g} |" for k, v in result["floors"].items()]
        lines.append("")
    if result.get("training"):
        lines += training_table(result["training"])
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.bench", description=__doc__.split("\n\n")[0],
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


WORKERS = {"generate": generation_worker, "agreement": agreement_worker, "train": training_worker}

if __name__ == "__main__":
    main()
