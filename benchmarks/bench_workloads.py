"""What the benchmark measures; `bench.py` runs it in child processes and reports.

The sizes and the workload, the work counts behind the floors and MFU, the floors (measured in the
calling process), and the workloads each child process runs and answers as one JSON line.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from dalle_mini_pt.sampling import GenerationConfig

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
SAMPLING = GenerationConfig(top_k=256, condition_scale=16.0, seed=0)  # min-dalle's defaults
PROMPT = [0, *range(100, 110), 2]  # <s> ten tokens </s>
UNCOND = [0, 2]  # the tokenised empty prompt



def model_config(**overrides):
    from omegaconf import OmegaConf

    from dalle_mini_pt.config import DalleBartConfig

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
    from dalle_mini_pt.model import ImageTokenDecoder

    with torch.device("meta"):
        decoder = ImageTokenDecoder(config)
    skip = ("embed.", ".cross_attn.k_proj.", ".cross_attn.v_proj.")
    numel = sum(p.numel() for n, p in decoder.named_parameters() if not any(s in n for s in skip))
    return numel * DTYPES[dtype].itemsize


def _layer_macs(config, part: str, tokens: int, keys: int) -> float:
    """Multiply-accumulates per token of one encoder or decoder layer, attention over `keys` included."""
    d, ffn = config.d_model, (getattr(config, f"{part}_ffn_dim") * (3 if config.use_glu else 2)
                              * config.d_model)
    return tokens * (4 * d * d + ffn + 2 * keys * d)


def generation_flops(config, batch: int, steps: int) -> float:
    """Useful FLOPs of a super-conditioned generation: the encoder and the cross-attention K/V on the 2
    prompts, then `steps` cached steps for 2 * batch rows, attending over the t + 1 codes so far."""
    d, text, rows = config.d_model, config.max_text_length, 2 * batch
    macs = 2 * config.encoder_layers * _layer_macs(config, "encoder", text, text)
    macs += 2 * config.decoder_layers * text * 2 * d * d
    step = (config.decoder_layers * (_layer_macs(config, "decoder", 1, text) + 2 * d * d)
            + d * config.image_rows)
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
    from dalle_mini_pt.huge_pages import on_huge_pages  # where `generate` puts weights

    (rows, cols), n = FLOOR_SHAPES[size]["matvec"], FLOOR_SHAPES[size]["gemm"]
    w, x = torch.empty(rows, cols).uniform_(-1, 1), torch.empty(cols).uniform_(-1, 1)
    w = on_huge_pages(w)
    out = {"matvec_float32_GBps": w.nbytes / _best_time(lambda: torch.mv(w, x), 5) / 1e9}
    for name, dtype in DTYPES.items():  # nn.Linear on 2 rows: a batch-1 super-conditioned step
        wd, xd = (w if dtype is w.dtype else on_huge_pages(w.to(dtype)),
                  x.to(dtype).expand(2, cols).contiguous())
        out[f"linear2_{name}_GBps"] = (wd.nbytes / _best_time(lambda: torch.nn.functional.linear(xd, wd), 5)
                                       / 1e9)
        a, b = torch.empty(n, n, dtype=dtype).uniform_(-1, 1), torch.empty(n, n, dtype=dtype).uniform_(-1, 1)
        out[f"gemm_{name}_GFLOPs"] = 2 * n ** 3 / _best_time(lambda: a @ b, 3) / 1e9
    out["bandwidth_GBps"] = max(out["matvec_float32_GBps"], out["linear2_float32_GBps"])
    return out


def step_matmul_seconds(config, dtype: str, batch: int) -> float:
    """One super-conditioned decoding step's matmuls alone, through the decoder's own Linear modules on
    weights placed as `generate` places them: what a step built on these kernels cannot beat."""
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

def _sampling_setup(spec: dict, dtype: torch.dtype):
    """The row's model (seeded random weights, built in `dtype`), the prompt, and the unconditional prompt
    as `generate` keywords."""
    from dalle_mini_pt.model import DalleBart

    torch.set_num_threads(spec["threads"])
    config = generation_config(spec["size"], spec["steps"])
    torch.manual_seed(0)
    with default_dtype(dtype):
        model = DalleBart(config).eval()
    ids, mask = padded(PROMPT, config.max_text_length)
    uncond_ids, uncond_mask = padded(UNCOND, config.max_text_length)
    return model, ids, mask, dict(uncond_input_ids=uncond_ids, uncond_attention_mask=uncond_mask)


def generation_worker(spec: dict) -> dict:
    from dalle_mini_pt.sampling import generate

    before_model = rss_mb("VmRSS")  # the imports' share of the peak
    model, ids, mask, common = _sampling_setup(spec, DTYPES[spec["dtype"]])

    def run():
        return generate(model, ids, mask, SAMPLING, num_images=spec["batch"], **common)

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
    from dalle_mini_pt.sampling import generate

    model, ids, mask, common = _sampling_setup(spec, torch.float32)
    config = model.config
    greedy = SAMPLING.replace(top_k=1)
    reference = generate(model, ids, mask, greedy, **common)[0]
    model.to(torch.bfloat16)
    free = generate(model, ids, mask, greedy, **common)[0]
    # infinite noise on fp32's code makes the sampler draw it, whatever the bf16 logits say
    noise = torch.zeros(config.image_length, 1, config.image_rows)
    noise[torch.arange(config.image_length), 0, reference] = float("inf")
    _, logits = generate(model, ids, mask, greedy, noise=noise, return_logits=True, **common)
    forced = logits[0, :, :config.codebook_size].argmax(-1)
    differs = (free != reference).nonzero()
    return {"steps": config.image_length, "forced_agreement": (forced == reference).float().mean().item(),
            "free_running_agreement": (free == reference).float().mean().item(),
            "free_running_identical_codes": int(differs[0]) if len(differs) else config.image_length}


def min_dalle_spec(config, spec: dict) -> dict:
    """Our config as min-dalle's constructor arguments, plus the workload."""
    common = dict(layer_count=config.decoder_layers, embed_count=config.d_model,
                  attention_head_count=config.decoder_attention_heads, glu_embed_count=config.decoder_ffn_dim)
    return {**spec, "prompt": PROMPT, "temperature": SAMPLING.temperature, "top_k": SAMPLING.top_k,
            "supercondition_factor": SAMPLING.condition_scale,
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

    from dalle_mini_pt.model import DalleBart
    from dalle_mini_pt.training.dallebart_module import DalleBartModule

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = model_config(**TRAIN_SIZES[spec["size"]])
    module = DalleBartModule(DalleBart(config), optimizer=instantiate(_adafactor_conf()))
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
            "encoder_ffn_dim", "decoder_ffn_dim", "activation_function", "ln_positions", "use_glu",
            "use_bias", "use_head_scale", "force_ln_scale", "use_final_ln_encoder", "use_final_ln_decoder",
            "init_std")
    model = {k: getattr(config, k) for k in keys}
    model.update(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, gradient_checkpointing=False)
    return {**spec, "config": model, "lr": _adafactor_conf().lr, "codebook_size": config.codebook_size}

WORKERS = {"generate": generation_worker, "agreement": agreement_worker, "train": training_worker}
