"""What the divergence guard (dalle_mini_pt/training/divergence.py) costs per training step: the same run
with it and without it.

    python benchmarks/divergence_guard.py                          # the debug experiment's tiny model, CPU
    python benchmarks/divergence_guard.py --steps 60 model=dalle_mini trainer=gpu data.batch_size=8
        # dalle-mini on a GPU (random weights)

The run is built as `python -m dalle_mini_pt.train +experiment=debug OVERRIDES` builds it, without
validation, checkpoints, loggers or progress bar (whose own host reads would hide the guard's), on the tiny
data set (made in a temporary folder unless --data-dir holds one). Each repeat trains `--steps` steps with
the guard and then without it (removed from the trainer's callbacks), from the same seed; the wall time
from step `--warmup` to the end (the device drained at both ends) gives ms/step, and the median over
repeats is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# the package first: it patches torchvision before Lightning imports it
from dalle_mini_pt.training.divergence import DivergenceGuard  # noqa: E402, I001
import pytorch_lightning as pl  # noqa: E402

QUIET = ["callbacks=none", "~logger", "+trainer.enable_progress_bar=false",
         "+trainer.enable_model_summary=false", "+trainer.enable_checkpointing=false",
         "+trainer.limit_val_batches=0"]


def drain(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock(pl.Callback):
    """Wall time from the start of step `warmup` to the end of training."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds, self.steps = warmup, None, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step == self.warmup:
            drain(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        drain(pl_module.device)
        self.seconds, self.steps = time.perf_counter() - self.start, trainer.global_step - self.warmup


def ms_per_step(overrides: list[str], out: Path, warmup: int, guarded: bool) -> float:
    from hydra import compose, initialize_config_dir

    from dalle_mini_pt.config_dir import CONFIG_DIR
    from dalle_mini_pt.train import build

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=debug", *QUIET, *overrides, f"paths.output_dir={out}"])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, module, trainer = build(cfg)
    if not guarded:
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, DivergenceGuard)]
    clock = Clock(warmup)
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    return 1000 * clock.seconds / clock.steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--data-dir", help="a paths.data_dir holding tiny/ (default: made in a temp folder)")
    parser.add_argument("overrides", nargs="*", help="training overrides, as on the train command line")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir) if args.data_dir else Path(scratch) / "data"
        if not (data_dir / "tiny").is_dir():
            from dalle_mini_pt.data.tiny_dataset import build as build_tiny

            build_tiny(data_dir / "tiny", n_train=256, n_val=32)
        overrides = [f"paths.data_dir={data_dir}", f"trainer.max_steps={args.steps}", *args.overrides]
        times = {True: [], False: []}
        for repeat in range(args.repeats):
            for guarded in (True, False):
                out = Path(scratch) / f"run{repeat}{'g' if guarded else ''}"
                times[guarded].append(ms_per_step(overrides, out, args.warmup, guarded))
    with_guard, without = statistics.median(times[True]), statistics.median(times[False])
    print("| overrides | steps timed | ms/step with the guard | without | difference |")
    print("|---|---|---|---|---|")
    shown = " ".join(args.overrides) or "(debug experiment)"
    print(f"| {shown} | {args.steps - args.warmup} × {args.repeats} | {with_guard:.2f} | {without:.2f} "
          f"| {100 * (with_guard / without - 1):+.1f}% |")


if __name__ == "__main__":
    main()
