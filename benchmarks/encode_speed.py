"""Images/s of the encoder tool (batched VQGAN, DataLoader workers decoding) against the naive loop that
reads, resizes and encodes one image at a time, on the same generated images, in the same run; with
`--processes 1 2` also the tool on 2 processes (DDP, forked: Lightning's ddp_fork), each with its share of
the cores (torch threads: Lightning gives each process cores / processes; `--num-workers` is split too).

    python benchmarks/encode_speed.py                       # tiny VQGAN, 512 images: a quick CPU check
    python benchmarks/encode_speed.py --vqgan imagenet_f16_16384 --images 256 --size 320 --device cuda
    python benchmarks/encode_speed.py --vqgan imagenet_f16_16384 --images 64 --batch-size 16 --processes 1 2

Times are wall time of the whole call, start-up of the processes included. VQGAN weights are random:
speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dalle_mini_pt.data.encode import CONFIG_DIR, encode_dataset  # noqa: E402
from dalle_mini_pt.data.image_sources import FolderSource, load_image  # noqa: E402


def make_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    """JPEGs in img2dataset layout, 4:5 portrait so every image is resized and cropped; smooth noise so the
    JPEG decode costs what a photo's does."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"{i // 1000:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size * 5 // 4), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        (folder / f"{i:09d}.jpg").write_bytes(buf.getvalue())
        (folder / f"{i:09d}.txt").write_text(f"image {i}")


def one_at_a_time(source: FolderSource, vqgan) -> float:
    start = time.perf_counter()
    for i in range(len(source)):
        image = torch.from_numpy(load_image(source.read(i).image, vqgan.config.resolution))
        vqgan.encode(image[None].to(vqgan.device))
    if vqgan.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def tool(source: FolderSource, vqgan, out: Path, batch_size: int, num_workers: int, processes: int = 1,
         device: str = "cpu", shard_size: int = 0) -> float:
    """Seconds for the encoder on `processes` devices (CPU processes or GPUs); `num_workers` in all."""
    shutil.rmtree(out, ignore_errors=True)
    trainer = {"accelerator": "gpu" if device == "cuda" else "cpu", "devices": processes}
    if processes > 1:  # forked from this process, which has not touched CUDA yet (see main)
        trainer["strategy"] = "ddp_fork"
    start = time.perf_counter()
    encode_dataset(source, vqgan, out, shard_size=shard_size or max(1, len(source)), batch_size=batch_size,
                   num_workers=max(1, num_workers // processes) if num_workers else 0, progress=False,
                   trainer=trainer)
    return time.perf_counter() - start


def build_vqgan(name: str, device: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="encode", overrides=[f"vqgan={name}", "input.path=x", "vqgan_weights=null"])
    torch.manual_seed(0)
    return instantiate(cfg.vqgan).to(device).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqgan", default="tiny", help="a conf/vqgan/ name")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=None,
                        help="generated image width (default 1.25x the VQGAN's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="encoder tool rows on this many processes (devices) each, e.g. 1 2")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vqgan = build_vqgan(args.vqgan, "cpu")  # moved to the device by the tool, or for the naive loop
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="encode_speed_"))
    make_images(workdir / "images", args.images, args.size or vqgan.config.resolution * 5 // 4)
    source = FolderSource(workdir / "images")
    # several pieces per process, the same for every row; the forked runs first, before CUDA is touched
    shard_size = max(1, -(-len(source) // (4 * max(args.processes))))
    multi = {p: tool(source, vqgan, workdir / f"shards{p}", args.batch_size, args.num_workers, p, args.device,
                     shard_size) for p in sorted(set(args.processes) - {1}, reverse=True)}
    batched = tool(source, vqgan, workdir / "shards", args.batch_size, args.num_workers, 1, args.device,
                   shard_size if multi else 0)
    vqgan.to(args.device)
    vqgan.encode(torch.zeros(2, 3, vqgan.config.resolution, vqgan.config.resolution))  # warm-up
    naive = one_at_a_time(source, vqgan)
    n = len(source)
    print(f"\nVQGAN {args.vqgan} ({vqgan.config.resolution}px), {n} JPEGs, device {args.device}, "
          f"{torch.get_num_threads()} torch threads")
    print("| method | seconds | images/s |\n|---|---|---|")
    print(f"| one image at a time | {naive:.2f} | {n / naive:.1f} |")
    print(f"| encoder tool (batch {args.batch_size}, {args.num_workers} workers) | {batched:.2f} | "
          f"{n / batched:.1f} |")
    for p, seconds in sorted(multi.items()):
        print(f"| encoder tool, {p} processes (batch {args.batch_size} each, {args.num_workers} workers in "
              f"all) | {seconds:.2f} | {n / seconds:.1f} |")
    print(f"speed-up: {naive / batched:.2f}x (target >= 2x)")
    for p, seconds in sorted(multi.items()):
        print(f"{p} processes: {batched / seconds:.2f}x one process (goal >= {0.9 * p:.1f}x)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
