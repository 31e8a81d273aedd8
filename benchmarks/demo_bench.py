"""The demo server's speed, against baselines measured in the same run:

1. images/s through the HTTP API for 1, 4 and 8 concurrent clients, against one client at a time (the
   same requests), with the sampler calls the batcher needed;
2. time to the first partial image against the time to the full grid (`pipe.stream`, one code row per
   partial), and the streamed full grid against `pipe()` without partials;
3. how to decode a partial: the whole grid (what the pipeline does) against only the rows that changed
   (plus a margin of rows above them), in ms per partial and in how far the strip's pixels are from the
   whole-grid decode of the same codes (the VQGAN's decoder attends globally, so they differ).

    python benchmarks/demo_bench.py                                   # tiny random + runs/shapes/pipeline
    python benchmarks/demo_bench.py --pipeline tiny --pipeline /tmp/smoke/pipeline --requests 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dalle_mini_pt.pipeline import DalleMiniPipeline  # noqa: E402

PROMPTS = ["a small red circle in the top left", "a large blue square", "a green cross on the right"]


def tiny_pipeline(directory: Path) -> Path:
    """Random tiny components (0.25 M-parameter DalleBart, 32x32 images from 16x16 codes), saved."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dalle_mini_pt import DalleBart, DalleBartConfig
    from dalle_mini_pt.data.tiny_dataset import train_tokenizer
    from dalle_mini_pt.generation_config import GenerationConfig
    from dalle_mini_pt.tokenizer import TextTokenizer

    torch.manual_seed(0)
    model = DalleBart(DalleBartConfig(encoder_vocab_size=512, image_vocab_size=32, max_text_length=16,
                                      d_model=64, encoder_layers=2, decoder_layers=2,
                                      encoder_attention_heads=4, decoder_attention_heads=4,
                                      encoder_ffn_dim=128, decoder_ffn_dim=128))
    tokenizer = TextTokenizer(train_tokenizer(PROMPTS), 16)
    parts = [instantiate(OmegaConf.load(ROOT / f"conf/{group}/tiny.yaml")) for group in ("vqgan", "clip")]
    DalleMiniPipeline(model, tokenizer, *parts, generation_config=GenerationConfig(
        num_images=4, top_k=16, condition_scale=3.0)).save_pretrained(directory)
    return directory


class Server:
    def __init__(self, pipeline: Path, batch_images: int, wait: float, threads: int, *extra: str,
                 device: str = "cpu"):
        import socket

        import httpx

        self.httpx = httpx
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "dalle_mini_pt.app", "--pipeline", str(pipeline), "--port",
                   str(self.port), "--batch-images", str(batch_images), "--batch-wait", str(wait), "--device",
                   device, *extra]
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError("the demo server did not start")

    def rss_mb(self) -> float:
        """The server process's resident memory now (Linux: /proc)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def calls(self) -> int:
        return self.httpx.get(self.url + "/health", timeout=10).json()["sampler_calls"]

    def generate(self, prompt: str, seed: int, num_images: int) -> None:
        answer = self.httpx.post(self.url + "/api/generate", timeout=3600,
                                 json={"prompt": prompt, "options": {"seed": seed, "num_images": num_images}})
        answer.raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def throughput(server: Server, clients: int, requests: int, num_images: int) -> dict:
    """`requests` requests spread over `clients` threads, each sending its share one after another."""
    jobs = [(PROMPTS[i % len(PROMPTS)], i) for i in range(requests)]
    shares = [jobs[c::clients] for c in range(clients)]
    before = server.calls()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda share: [server.generate(p, s, num_images) for p, s in share], shares))
    seconds = time.perf_counter() - start
    return {"clients": clients, "seconds": seconds, "images_per_s": requests * num_images / seconds,
            "sampler_calls": server.calls() - before}


def streaming(pipe: DalleMiniPipeline, num_images: int) -> dict:
    prompt = PROMPTS[0]
    pipe(prompt, num_images=num_images, seed=0, progress=False)  # warm-up
    start = time.perf_counter()
    pipe(prompt, num_images=num_images, seed=0, progress=False)
    plain = time.perf_counter() - start
    start, first = time.perf_counter(), None
    for written, _ in pipe.stream(prompt, num_images=num_images, seed=0):
        first = first or time.perf_counter() - start
    return {"first_partial_s": first, "full_grid_streamed_s": time.perf_counter() - start,
            "full_grid_plain_s": plain, "partials": written // pipe.vqgan.config.grid_size}


def _decode_rows(vqgan, codes: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """Decode only code rows top..bottom-1 as a smaller grid (what decoding the changed rows means)."""
    g = vqgan.config.grid_size
    grid = codes.view(-1, g, g)[:, top:bottom].reshape(-1)
    shape = (codes.shape[0], bottom - top, g, vqgan.config.embed_dim)
    z = vqgan.quantize.get_codebook_entry(grid, shape=shape)
    return vqgan.to_unit_range(vqgan.decoder(vqgan.post_quant_conv(z)))


@torch.inference_mode()
def partial_decode(pipe: DalleMiniPipeline, num_images: int, margin: int, repeats: int = 3) -> dict:
    """Per partial (one new code row), the whole grid against the new row with `margin` rows above it."""
    vqgan, g = pipe.vqgan, pipe.vqgan.config.grid_size
    codes = pipe(PROMPTS[0], num_images=num_images, seed=0)[0].codes
    f = vqgan.config.resolution // g
    whole = strip = error = 0.0
    for _ in range(repeats):
        for row in range(g):
            partial = codes.clone().view(-1, g, g)
            partial[:, row + 1:] = 0
            partial = partial.view(codes.shape[0], -1)
            start = time.perf_counter()
            full = vqgan.decode(partial)
            whole += time.perf_counter() - start
            top = max(0, row - margin)
            start = time.perf_counter()
            part = _decode_rows(vqgan, partial, top, row + 1)
            strip += time.perf_counter() - start
            new = part[:, :, (row - top) * f:(row - top + 1) * f]
            error = max(error, float((new - full[:, :, row * f:(row + 1) * f]).abs().max()) * 255)
    n = repeats * g
    return {"margin_rows": margin, "whole_grid_ms": 1e3 * whole / n, "changed_rows_ms": 1e3 * strip / n,
            "max_pixel_error": error}


def table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n{title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run_one(spec: str, args, scratch: Path) -> dict:
    path = tiny_pipeline(scratch / "tiny") if spec == "tiny" else Path(spec)
    pipe = DalleMiniPipeline.from_pretrained(path)
    result = {"pipeline": spec, "streaming": streaming(pipe, args.num_images),
              "partial_decode": [partial_decode(pipe, args.num_images, m) for m in args.margins]}
    server = Server(path, max(args.clients) * args.num_images, args.batch_wait, args.threads)
    try:
        server.generate("warm-up", 0, args.num_images)
        baseline = throughput(server, 1, args.requests, args.num_images)
        result["throughput"] = [baseline] + [throughput(server, c, args.requests, args.num_images)
                                             for c in args.clients]
    finally:
        server.stop()
    return result


def report(results: list[dict], args) -> str:
    out = []
    for r in results:
        base = r["throughput"][0]["images_per_s"]
        out.append(table(f"{r['pipeline']}: {args.requests} requests of {args.num_images} images through "
                         "POST /api/generate", ["clients", "images/s", "÷ one at a time", "sampler calls"],
                         [["1 at a time", base, 1.0, r["throughput"][0]["sampler_calls"]]]
                         + [[t["clients"], t["images_per_s"], t["images_per_s"] / base, t["sampler_calls"]]
                            for t in r["throughput"][1:]]))
        s = r["streaming"]
        out.append(table(f"{r['pipeline']}: streaming, {args.num_images} images, {s['partials']} partials",
                         ["first partial s", "full grid streamed s", "full grid, no partials s",
                          "first ÷ full", "streamed ÷ plain"],
                         [[s["first_partial_s"], s["full_grid_streamed_s"], s["full_grid_plain_s"],
                           s["first_partial_s"] / s["full_grid_streamed_s"],
                           s["full_grid_streamed_s"] / s["full_grid_plain_s"]]]))
        out.append(table(f"{r['pipeline']}: decoding one partial ({args.num_images} images)",
                         ["margin rows", "whole grid ms", "changed rows ms", "changed ÷ whole",
                          "max pixel error (0..255)"],
                         [[d["margin_rows"], d["whole_grid_ms"], d["changed_rows_ms"],
                           d["changed_rows_ms"] / d["whole_grid_ms"], d["max_pixel_error"]]
                          for d in r["partial_decode"]]))
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", action="append", default=None,
                   help="'tiny' (random tiny components) or a saved pipeline; repeatable "
                        "(default: tiny and runs/shapes/pipeline)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=16, help="requests per measurement")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--batch-wait", type=float, default=0.05)
    p.add_argument("--margins", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = args.pipeline or ["tiny", "runs/shapes/pipeline"]
    with tempfile.TemporaryDirectory() as scratch:
        results = [run_one(spec, args, Path(scratch)) for spec in specs]
    print(report(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
