"""Export a Lightning training checkpoint to the native format (and optionally push it to the hub).

    python -m dalle_mini_pt.export CKPT OUT_DIR [--overwrite] [--push REPO] [--tokenizer PATH] [--dtype DTYPE]

OUT_DIR must be new or empty (a folder holding another model would keep its other files, e.g. a tokenizer of
another vocabulary); `--overwrite` replaces it whole. Everything is written beside it and renamed into place,
so a failed export leaves OUT_DIR as it was. A checkpoint whose weights hold inf/NaN is refused, naming them.
The checkpoint is read as `DalleBart.from_pretrained(CKPT)` reads it (`hub/lightning.py`: on CPU whatever
device wrote it, tensors only). A run that trained LoRA adapters (`model.lora`) is exported with the adapters
merged into plain weights (by peft), so the model directory needs no peft to load. Run it once, on one
process (rank 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from .config import DalleBartConfig
from .hub.lightning import LORA_KEY, load_lightning_checkpoint, network_config, network_state
from .hub.mixin import StoredComponent
from .hub.saving import check_target
from .model import DalleBart
from .training.divergence import refuse_non_finite
from .training.lora import LoraSettings, merged


def load_trained(ckpt_path) -> DalleBart:
    """The DalleBart of a training checkpoint, LoRA adapters merged."""
    ckpt = load_lightning_checkpoint(Path(ckpt_path))
    refuse_non_finite(network_state(ckpt), str(ckpt_path),
                      "Export a checkpoint saved before the run diverged.")
    if LORA_KEY not in ckpt:
        stored = StoredComponent(network_config(ckpt), network_state(ckpt), str(ckpt_path), str(ckpt_path))
        return DalleBart.from_stored(stored)
    net = DalleBart(DalleBartConfig.from_dict(network_config(ckpt)))
    return merged(net, LoraSettings(**ckpt[LORA_KEY]), network_state(ckpt)).eval()


def export(ckpt_path, out_dir, *, push: Optional[str] = None, tokenizer=None, dtype=None, private=None,
           overwrite: bool = False, option: str = "overwrite=True"):
    check_target(out_dir, overwrite, option)  # before reading a checkpoint of gigabytes
    model = load_trained(ckpt_path)
    model.save_pretrained(out_dir, tokenizer=tokenizer, dtype=dtype, repo_id=push, overwrite=overwrite)
    if push:
        model.push_to_hub(push, tokenizer=tokenizer, dtype=dtype, private=private,
                          commit_message=f"Export {Path(ckpt_path).name}")
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Export a dalle_mini_pt Lightning checkpoint to "
                                     "config.json + model.safetensors (+ tokenizer, model card).")
    parser.add_argument("ckpt", help="the .ckpt written during training")
    parser.add_argument("out_dir", help="directory to write: new or empty (created if needed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR whole when it already holds files")
    parser.add_argument("--push", metavar="REPO", help="also upload to this hub repo (e.g. me/dalle-mini-ft)")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer directory or hub name to save alongside")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="store the weights in this dtype (default: as trained)")
    args = parser.parse_args(argv)
    try:
        model = export(args.ckpt, args.out_dir, push=args.push, tokenizer=args.tokenizer, dtype=args.dtype,
                       private=args.private or None, overwrite=args.overwrite, option="--overwrite")
    except (FileExistsError, NotADirectoryError) as err:  # the target: named, no traceback
        parser.exit(2, f"export: {err}\n")
    print(f"exported {model.num_parameters():,} parameters to {args.out_dir}"
          + (f" and pushed to {args.push}" if args.push else ""))


if __name__ == "__main__":
    main()
