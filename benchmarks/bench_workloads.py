"""What the benchmark measures; `bench.py` runs it in child processes and reports.

The sizes and the workload, the work counts behind the floors and MFU (`bench_floors.py` measures the
floors), and the workloads each child process runs and answers as one JSON line. A child builds its model
on the row's device in the row's dtype; on CUDA it synchronises around the timed region and reports the
peak of `torch.cuda.max_memory_allocated` over the timed run (weights included), on the CPU its peak RSS.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from dalle_mini_pt.generation_config import GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)
# mini and mega are conf/model/dalle_mini.yaml and dalle_mega.yaml as they stand; tiny keeps mini's
# vocabularies and lengths (min-dalle hard-codes 64 text tokens and 2**14 codes) and shrinks the layers
SIZES = ("mini", "mega", "tiny")
# training: a DalleBart with 99 M non-embedding parameters (163 M in all), the mini model itself, and tiny
TRAIN_SIZES = {"100m": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                            decoder_attention_heads=12, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
               "mini": {}, "tiny": TINY}
SAMPLING = GenerationConfig(top_k=256, condition_scale=16.0, seed=0)  # min-dalle's defaults
PROMPT = [0, *range(100, 110), 2]  # <s> ten tokens </s>
UNCOND = [0, 2]  # the tokenised empty prompt


def size_overrides(size: str) -> dict:
    from omegaconf import OmegaConf

    if size == "tiny":
        return dict(TINY)
    if size == "mega":
        return OmegaConf.to_container(OmegaConf.load(CONF / "model" / "dalle_mega.yaml").net.config)
    return {}


def model_config(**overrides):
    from omegaconf import OmegaConf

    from dalle_mini_pt.config import DalleBartConfig

    values = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "dalle_mini.yaml").net.config)
    values.pop("_target_", None)  # conf/model/dallebart_base.yaml names the class
    return DalleBartConfig(**{**values, **overrides})


def generation_config(size: str, steps: int):
    # the position table keeps its 256 rows; the cache and the loop follow `steps`
    return model_config(**size_overrides(size), image_length=steps, image_positions=256)


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


def padded(tokens: list[int], length: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.ones((1, length), dtype=torch.long)  # 1 is <pad>
    ids[0, :len(tokens)] = torch.tensor(tokens)
    return ids.to(device), (ids != 1).long().to(device)


class Timed:
    """Wall time of a block, the device drained before and after it; `peak` is the block's peak memory."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()  # the peak starts at what is allocated now: the weights
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start

    def memory(self) -> dict:
        if self.device == "cuda":
            return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20}
        return {"peak_rss_mb": rss_mb()}


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


def cache_bytes_per_step(config, dtype: str, batch: int, steps: int) -> float:
    """Self-attention K/V bytes a step must read, on average over `steps`: the t + 1 positions written so far
    for 2 * batch rows (the text's K/V, under 2% of it, left out)."""
    per_position = config.decoder_layers * 2 * (2 * batch) * config.d_model * DTYPES[dtype].itemsize
    return per_position * (steps + 1) / 2


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


# ---------------------------------------------------------------- child-process workloads

def _sampling_setup(spec: dict, dtype: torch.dtype):
    """The row's model (seeded random weights, built in `dtype` on the row's device, its weights placed as
    loading a pipeline places them), the prompt, and the unconditional prompt as `generate` keywords."""
    from dalle_mini_pt.huge_pages import move_to_huge_pages
    from dalle_mini_pt.model import DalleBart

    torch.set_num_threads(spec["threads"])
    device = spec.get("device", "cpu")
    config = generation_config(spec["size"], spec["steps"])
    torch.manual_seed(0)
    with default_dtype(dtype), torch.device(device):
        model = DalleBart(config).eval()
    move_to_huge_pages(model)  # on the CPU; elsewhere nothing moves
    ids, mask = padded(PROMPT, config.max_text_length, device)
    uncond_ids, uncond_mask = padded(UNCOND, config.max_text_length, device)
    return model, ids, mask, dict(uncond_input_ids=uncond_ids, uncond_attention_mask=uncond_mask)


def generation_worker(spec: dict) -> dict:
    from dalle_mini_pt import cuda_graph
    from dalle_mini_pt.sampling import generate

    before_model = rss_mb("VmRSS")  # the imports' share of the peak
    model, ids, mask, common = _sampling_setup(spec, DTYPES[spec["dtype"]])
    options = SAMPLING.replace(num_images=spec["batch"], step_mode=spec.get("step_mode", "auto"))

    def run():
        return generate(model, ids, mask, options, **common)

    with Timed(spec.get("device", "cpu")) as warmup:  # graph modes capture (and compile) here
        for _ in range(spec["warmup"]):
            run()
    before = dict(vars(cuda_graph.COUNTS))
    with Timed(spec.get("device", "cpu")) as timed:
        codes = run()
    assert codes.shape == (spec["batch"], spec["steps"])
    graph = {f"{k}_timed": v - before[k] for k, v in vars(cuda_graph.COUNTS).items()}
    return {"seconds": timed.seconds, **timed.memory(), "rss_before_model_mb": before_model,
            "warmup_seconds": warmup.seconds, "params": model.num_parameters(), **graph}


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
    noise = torch.zeros(config.image_length, 1, config.image_rows, device=ids.device)
    noise[torch.arange(config.image_length, device=ids.device), 0, reference] = float("inf")
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


def _training_setup(spec: dict):
    from hydra.utils import instantiate

    from dalle_mini_pt.model import DalleBart
    from dalle_mini_pt.training.dallebart_module import DalleBartModule

    device = torch.device(spec.get("device", "cpu"))
    torch.manual_seed(0)
    config = model_config(**TRAIN_SIZES[spec["size"]])
    with device:
        module = DalleBartModule(DalleBart(config), optimizer=instantiate(_adafactor_conf()),
                                 compile=spec.get("mode") == "compiled")
        ids = torch.randint(3, config.encoder_vocab_size, (spec["batch"], config.max_text_length))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "labels": torch.randint(0, config.codebook_size, (spec["batch"], config.image_length))}
    module.setup("fit")  # compiles the network in place when asked, as the Trainer would
    return module, batch


def training_worker(spec: dict) -> dict:
    """One optimizer step as Lightning takes it: the module's training_step (under autocast for bf16-mixed,
    as Lightning's precision plugin runs it), backward, the Hydra Adafactor."""
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
    torch.set_num_threads(spec["threads"])
    device = spec.get("device", "cpu")
    module, batch = _training_setup(spec)
    optimizer = module.configure_optimizers()
    mixed = spec.get("precision", "32") == "bf16-mixed"
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if mixed else contextlib.nullcontext

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()

    with Timed(device) as warmup:
        for _ in range(spec["warmup"]):
            step()
    with Timed(device) as timed:
        for _ in range(spec["steps"]):
            step()
    with Timed(device) as update:  # the optimizer alone: HF Adafactor loops over parameters in Python
        optimizer.step()
    return {"seconds_per_step": timed.seconds / spec["steps"], **timed.memory(),
            "optimizer_seconds": update.seconds, "warmup_seconds": warmup.seconds,
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
