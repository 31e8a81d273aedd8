"""Export a Lightning training checkpoint to the native format (and optionally push it to the hub).

    python -m dalle_mini_pt.export CKPT OUT_DIR [--push REPO] [--tokenizer PATH] [--dtype bfloat16]

Reads the checkpoint on CPU whatever device wrote it (TPU/GPU tensors are mapped to CPU). It loads with
`weights_only=True`: our checkpoints hold only tensors, numbers, strings and plain containers (the optimizer
and scheduler states, `hyper_parameters` are not saved because the module does not call
save_hyperparameters), so nothing is unpickled beyond those. Run it once, on one process (rank 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from .config import DalleBartConfig
from .hub import build_model, push_to_hub, save_pretrained

PREFIX = "net."  # DalleMiniModule keeps the DalleBart as `self.net`


def model_from_lightning(ckpt_path, dtype=torch.float32):
    """The DalleBart inside a checkpoint written by `DalleMiniModule` (which stores its config)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no such checkpoint file")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises several types for corrupt or foreign files)
        raise ValueError(f"{ckpt_path}: not a loadable Lightning checkpoint of tensors only ({err})") from err
    if "dallebart_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path}: no 'dallebart_config'/'state_dict' entries; it was not written by "
                         "dalle_mini_pt's DalleMiniModule")
    config = DalleBartConfig.from_dict(ckpt["dallebart_config"])
    config.gradient_checkpointing = False  # a training setting; the exported model is for inference first
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    # torch.compile wraps modules as `_orig_mod`; compile happens in place here, but be safe for old runs
    state = {k.replace("._orig_mod", "").replace("_orig_mod.", ""): v for k, v in state.items()}
    return build_model(config, state, f"{ckpt_path} (state_dict, '{PREFIX}' prefix)", dtype=dtype)


def export(ckpt_path, out_dir, *, push: Optional[str] = None, tokenizer=None, dtype=None, private=None):
    model = model_from_lightning(ckpt_path)
    save_pretrained(model, out_dir, tokenizer=tokenizer, dtype=dtype, repo_id=push)
    if push:
        push_to_hub(model, push, tokenizer=tokenizer, dtype=dtype, private=private,
                    commit_message=f"Export {Path(ckpt_path).name}")
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Export a dalle_mini_pt Lightning checkpoint to "
                                     "config.json + model.safetensors (+ tokenizer, model card).")
    parser.add_argument("ckpt", help="the .ckpt written during training")
    parser.add_argument("out_dir", help="directory to write (created if needed)")
    parser.add_argument("--push", metavar="REPO", help="also upload to this hub repo (e.g. me/dalle-mini-ft)")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer directory or hub name to save alongside")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="store the weights in this dtype (default: as trained)")
    args = parser.parse_args(argv)
    model = export(args.ckpt, args.out_dir, push=args.push, tokenizer=args.tokenizer, dtype=args.dtype,
                   private=args.private or None)
    print(f"exported {model.num_parameters():,} parameters to {args.out_dir}"
          + (f" and pushed to {args.push}" if args.push else ""))


if __name__ == "__main__":
    main()
