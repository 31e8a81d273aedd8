"""The demo server under load through the OpenAI Images API, driven by the official `openai` client: one
client at a time for a while (the baseline), then many concurrent clients for longer, each sending its
next request as soon as the last is answered. Reports per phase the requests, errors, latency p50/p95,
images/s (and against the baseline), the sampler calls, and the server's RSS at the start and the end of
the load. Exits 1 if any request failed.

    python benchmarks/server_load.py --pipeline runs/shapes/pipeline                # 32 clients, 2 minutes
    python benchmarks/server_load.py --pipeline tiny --clients 4 --seconds 10 --baseline-seconds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_bench import PROMPTS, Server, table, tiny_pipeline  # noqa: E402


def phase(server: Server, clients: int, seconds: float, n: int) -> dict:
    """`clients` threads, each sending requests one after another until `seconds` have passed (and at least
    one)."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(c: int) -> None:
        i = 0
        while i == 0 or time.perf_counter() < deadline:  # at least one request each
            start = time.perf_counter()
            try:
                answer = client.images.generate(prompt=PROMPTS[(c + i) % len(PROMPTS)], n=n,
                                                response_format="b64_json")
                ok = len(answer.data) == n
            except openai.APIError as e:
                ok = False
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
            i += 1

    calls, rss_start, start = server.calls(), server.rss_mb(), time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {"clients": clients, "seconds": wall, "requests": len(latencies) + len(errors),
            "errors": len(errors), "first_errors": errors[:3], "p50_s": statistics.median(latencies),
            "p95_s": q[18], "images_per_s": len(latencies) * n / wall,
            "sampler_calls": server.calls() - calls,
            "rss_start_mb": rss_start, "rss_end_mb": server.rss_mb()}


def report(result: dict, args) -> str:
    base = result["phases"][0]["images_per_s"]
    rows = [[p["clients"], p["requests"], p["errors"], p["p50_s"], p["p95_s"], p["images_per_s"],
             p["images_per_s"] / base, p["sampler_calls"], p["rss_start_mb"], p["rss_end_mb"]]
            for p in result["phases"]]
    return table(f"{result['pipeline']}: POST /v1/images/generations, n={args.n}, --batch-images "
                 f"{result['batch_images']}, --batch-wait {args.batch_wait}",
                 ["clients", "requests", "errors", "p50 s", "p95 s", "images/s", "÷ one client",
                  "sampler calls", "RSS start MB", "RSS end MB"], rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="runs/shapes/pipeline",
                   help="a saved pipeline, or 'tiny' (random tiny components)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=120.0, help="length of the concurrent phase")
    p.add_argument("--baseline-seconds", type=float, default=30.0, help="length of the one-client phase")
    p.add_argument("--n", type=int, default=1, help="images per request (OpenAI's `n`)")
    p.add_argument("--batch-images", type=int, default=None, help="default: clients x n, all merged")
    p.add_argument("--batch-wait", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    batch_images = args.batch_images or args.clients * args.n
    with tempfile.TemporaryDirectory() as scratch:
        path = tiny_pipeline(Path(scratch) / "tiny") if args.pipeline == "tiny" else Path(args.pipeline)
        server = Server(path, batch_images, args.batch_wait, args.threads, "--no-page", "--max-queue",
                        str(2 * args.clients), device=args.device)
        try:
            phase(server, 1, 0.0, args.n)  # warm-up: one request
            phases = [phase(server, 1, args.baseline_seconds, args.n),
                      phase(server, args.clients, args.seconds, args.n)]
        finally:
            server.stop()
    result = {"pipeline": args.pipeline, "batch_images": batch_images, "phases": phases}
    print(report(result, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if any(p["errors"] for p in phases):
        print(f"errors: {[e for p in phases for e in p['first_errors']]}", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
