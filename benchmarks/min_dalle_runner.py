"""One generation row of `python benchmarks/bench.py` on min-dalle 0.4.11 (run with .venv-mindalle/bin/python,
or with any Python where min_dalle imports, as on a GPU machine with carried wheels).

    .venv-mindalle/bin/python benchmarks/min_dalle_runner.py '{"encoder": {...}, "decoder": {...}, ...}'

min-dalle's own loop runs unchanged: `MinDalle.generate_raw_image_stream` (encoder pass, expansion to
conditional + unconditional rows, preallocated attention state, `decoder.sample_tokens` per step under its
autocast, `torch.cuda.empty_cache()` per step). Only what `MinDalle.__init__` downloads is replaced: the
encoder and decoder are built from the spec's sizes with random weights, on the spec's device in its dtype
(`is_reusable=True`, as `MinDalle(device="cuda", dtype=torch.float16)` leaves them), the tokenizer returns the
spec's token ids, and the VQGAN detokenizer returns the codes (the bench times codes, not pixels). The
spec's `steps` < 256 sets min-dalle's module constant IMAGE_TOKEN_COUNT before the decoder is built, so its
loop, attention state and causal mask cover that many codes. The loop reads `grid_size` only as
`grid_size ** 2`, the image count, so a batch that is no square (8, 32) is passed as an int whose square is
that batch. Prints one JSON line: seconds, peak RSS, or on CUDA peak `max_memory_allocated`.
"""

import json
import sys
import time
from pathlib import Path

import torch
from min_dalle import min_dalle
from min_dalle.models import DalleBartDecoder, DalleBartEncoder, dalle_bart_decoder


class _Tokenizer:
    def __init__(self, tokens):
        self.tokens = tokens

    def tokenize(self, text, is_verbose=False):
        return self.tokens


class _CodesOut:
    def forward(self, is_seamless, image_tokens):
        return image_tokens


class _ImageCount(int):
    """A `grid_size` whose square is `images`: min-dalle's loop uses it for nothing else."""

    def __new__(cls, images: int):
        new = super().__new__(cls, round(images ** 0.5))
        new.images = images
        return new

    def __pow__(self, exponent):
        assert exponent == 2
        return self.images


def rss_mb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory, as benchmarks/bench.py reads it for ours."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(spec: dict) -> "min_dalle.MinDalle":
    """A MinDalle as __init__ leaves it with is_reusable=True, minus the downloads."""
    dtype, device = getattr(torch, spec["dtype"]), spec.get("device", "cpu")
    min_dalle.IMAGE_TOKEN_COUNT = dalle_bart_decoder.IMAGE_TOKEN_COUNT = spec["steps"]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the row's dtype, as the bench builds ours (no fp32 copy in RSS)
    try:
        with torch.device(device):
            encoder = DalleBartEncoder(**spec["encoder"], device=device).to(dtype).eval()
            decoder = DalleBartDecoder(**spec["decoder"], device=device).to(dtype).eval()
    finally:
        torch.set_default_dtype(default)  # min-dalle allocates its attention state in the default dtype
    model = object.__new__(min_dalle.MinDalle)
    model.__dict__.update(
        device=device, is_mega=False, is_reusable=True, dtype=dtype, is_verbose=False,
        text_token_count=spec["encoder"]["text_token_count"], layer_count=spec["decoder"]["layer_count"],
        attention_head_count=spec["decoder"]["attention_head_count"],
        embed_count=spec["decoder"]["embed_count"], glu_embed_count=spec["decoder"]["glu_embed_count"],
        text_vocab_count=spec["encoder"]["text_vocab_count"],
        image_vocab_count=spec["decoder"]["image_vocab_count"],
        tokenizer=_Tokenizer(spec["prompt"]), encoder=encoder, decoder=decoder, detokenizer=_CodesOut())
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    spec = json.loads(sys.argv[1])
    device = spec.get("device", "cpu")
    torch.set_num_threads(spec["threads"])  # min_dalle sets os.cpu_count() threads at import
    before_model = rss_mb("VmRSS")
    model = build(spec)

    def run():
        stream = model.generate_raw_image_stream(
            text="", seed=1, grid_size=_ImageCount(spec["batch"]), temperature=spec["temperature"],
            top_k=spec["top_k"], supercondition_factor=spec["supercondition_factor"])
        return list(stream)

    try:
        for _ in range(spec["warmup"]):
            run()
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = run()
        _sync(device)
        seconds = time.perf_counter() - start
    except RuntimeError as err:  # e.g. bfloat16 on CPU: its mixed precision relies on CUDA autocast
        print(json.dumps({"error": f"min-dalle {spec['dtype']} fails on {device}: {err}"}))
        return
    assert spec["steps"] < 256 or tuple(out[-1].shape) == (spec["batch"], 256)
    params = sum(p.numel() for m in (model.encoder, model.decoder) for p in m.parameters())
    memory = ({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20} if device == "cuda"
              else {"peak_rss_mb": rss_mb()})
    print(json.dumps({"seconds": seconds, **memory, "rss_before_model_mb": before_model, "params": params}))


if __name__ == "__main__":
    main()
