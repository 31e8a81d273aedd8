"""What each of the sampler's CPU choices saves, measured here: the figures of docs/cpu_decoding.md.

    python benchmarks/cpu_choices.py --threads 1 --json cpu_choices.json   # mini (0.44 B), random weights
    python benchmarks/cpu_choices.py --size tiny --repeats 1                # seconds: the smoke run

Rows, per --dtypes:
  huge_pages  a super-conditioned batch-1 `generate` of --steps codes, per code: the weights on 4 KiB pages,
              then moved onto 2 MiB ones (`huge_pages.move_to_huge_pages`, as loading a pipeline does)
  linear      the matmuls of one decoding step (the decoder's `layers.Linear` modules a step runs, and the
              lm_head) on 2 and 8 rows: through `Linear` (the kernel it picks) and through F.linear
  cut_text    the encoder on a 12-token prompt cut after its last token (what the dynamic step mode does)
              and at its 64 padded positions
Each figure is the best of --repeats. Other processes change every one of them: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_floors import best_time, step_linears
from bench_workloads import DTYPES, PROMPT, SAMPLING, UNCOND, default_dtype, generation_config, padded

from dalle_mini_pt.huge_pages import move_to_huge_pages
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.sampling import generate


def huge_pages_row(model: DalleBart, repeats: int) -> dict:
    config = model.config
    ids, mask = padded(PROMPT, config.max_text_length)
    uncond_ids, uncond_mask = padded(UNCOND, config.max_text_length)
    options = SAMPLING.replace(num_images=1)

    def step_seconds() -> float:
        run = lambda: generate(model, ids, mask, options, uncond_input_ids=uncond_ids,  # noqa: E731
                               uncond_attention_mask=uncond_mask)
        return best_time(run, repeats) / config.image_length

    small = step_seconds()
    moved = move_to_huge_pages(model)
    return {"row": "huge_pages", "4KiB_s": small, "2MiB_s": step_seconds(), "bytes_moved": moved}


def linear_rows(model: DalleBart, repeats: int) -> list[dict]:
    linears = [*step_linears(model.decoder), model.decoder.lm_head]
    rows = []
    for n in (2, 8):
        calls = [(m, torch.randn(n, m.in_features, dtype=m.weight.dtype)) for m in linears]
        ours = best_time(lambda: [m(x) for m, x in calls], repeats)
        plain = best_time(lambda: [F.linear(x, m.weight, m.bias) for m, x in calls], repeats)
        rows.append({"row": "linear", "rows": n, "matmuls": len(calls), "Linear_s": ours,
                     "F.linear_s": plain})
    return rows


def cut_text_row(model: DalleBart, repeats: int) -> dict:
    ids, mask = padded(PROMPT, model.config.max_text_length)
    length = len(PROMPT)
    return {"row": "cut_text", "tokens": length, "positions": ids.shape[1],
            "cut_s": best_time(lambda: model.encoder(ids[:, :length], mask[:, :length]), repeats),
            "padded_s": best_time(lambda: model.encoder(ids, mask), repeats)}


def measure(size: str, steps: int, dtypes: list[str], repeats: int) -> list[dict]:
    results = []
    for name in dtypes:
        torch.manual_seed(0)
        with default_dtype(DTYPES[name]):
            model = DalleBart(generation_config(size, steps)).eval()
        with torch.inference_mode():
            rows = [huge_pages_row(model, repeats), *linear_rows(model, repeats),
                    cut_text_row(model, repeats)]
        results += [{"dtype": name, **row} for row in rows]
        del model
    return results


def markdown(results: list[dict]) -> str:
    lines = ["| dtype | row | without the choice | with it | ratio |", "|---|---|---|---|---|"]
    for r in results:
        name, without, with_ = {
            "huge_pages": ("decoding step, 4 KiB → 2 MiB pages", r.get("4KiB_s"), r.get("2MiB_s")),
            "linear": (f"{r.get('matmuls')} step matmuls on {r.get('rows')} rows, F.linear → Linear",
                       r.get("F.linear_s"), r.get("Linear_s")),
            "cut_text": (f"encoder, {r.get('positions')} padded → {r.get('tokens')} cut positions",
                         r.get("padded_s"), r.get("cut_s")),
        }[r["row"]]
        lines.append(f"| {r['dtype']} | {name} | {1e3 * without:.1f} ms | {1e3 * with_:.1f} ms "
                     f"| {without / with_:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["mini", "tiny"], default="mini")
    p.add_argument("--steps", type=int, default=32, help="codes per timed generate (huge_pages row)")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not 1 <= args.steps <= 256:
        p.error(f"--steps {args.steps} must be between 1 and 256 (the codes of an image)")
    torch.set_num_threads(args.threads)
    report = {"date": datetime.date.today().isoformat(), "size": args.size, "threads": args.threads,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "results": measure(args.size, args.steps, args.dtypes, args.repeats)}
    print(markdown(report["results"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
