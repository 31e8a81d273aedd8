"""Encode image–caption pairs into VQGAN code shards, the training data of DALL·E mini.

    python -m dalle_mini_pt.data.encode input.path=images/ output_dir=data/encoded/train \\
        vqgan_weights=vqgan.safetensors [input.format=folder|tar|table|hf] [vqgan=imagenet_f16_16384]
    # N devices or hosts: the training launchers and trainer groups, e.g. trainer=ddp trainer.devices=8,
    # torchrun, SLURM, or trainer=tpu on a TPU VM

The run is a Lightning predict loop (`encode_loop`): the same launchers and `trainer=` groups as training.
Its work is split into pieces, each one output shard (`encode_plan`): `shard_size` items of an indexed
source, or one input file of a streamed one (a tar). The pieces depend only on the input and the settings,
so an N-process run writes exactly the shards of a 1-process run. A shard appears under its final name only
once complete (`shard_files`); a rerun of the same command skips the shards that exist, so a run that was
killed anywhere resumes shard by shard. Files that cannot be read as images are listed in each shard's
metadata and gathered into one `report.json` next to the shards.
"""

from __future__ import annotations

import signal
import threading
import warnings
from typing import Optional

import hydra
import pyarrow as pa
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from ..config_dir import CONFIG_DIR
from ..vqgan import VQGAN
from .code_writer import ShardCollector
from .encode_loop import CodeEncoder, EncodeData
from .encode_plan import run_identity
from .input_formats import open_source
from .shard_files import OutputDir

# what the loop needs of any trainer group: no logs, checkpoints or model summary, our own progress bar,
# and no DistributedSampler (the plan splits the work)
TRAINER_FIXED = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False,
                 "enable_progress_bar": False, "use_distributed_sampler": False}


def check_precision(precision) -> None:
    if str(precision) not in ("32", "32-true"):
        raise ValueError(f"trainer.precision={precision}: the VQGAN only runs in float32 (its codes "
                         "change in bf16, and XLA's bf16-true would store its weights in bf16), so encoding "
                         "takes trainer.precision=32-true")


def default_trainer(vqgan: VQGAN) -> dict:
    """One process on the VQGAN's own device."""
    device = vqgan.device
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}


def encode_dataset(source, vqgan: VQGAN, output_dir, *, shard_size: int = 10000, batch_size: int = 64,
                   num_workers: int = 4, row_group_size: int = 1000, passthrough=(), progress: bool = True,
                   trainer: Optional[dict] = None) -> dict:
    """Encode every item of `source` into `output_dir` (a path or fsspec URL); returns the report (also
    written to report.json). Shards already there from an interrupted run of the same settings are kept.
    `trainer`: Trainer arguments (a `trainer=` group's), default one process on the VQGAN's device."""
    kwargs = dict(trainer or default_trainer(vqgan))
    check_precision(kwargs.setdefault("precision", "32-true"))
    out = OutputDir(output_dir)
    run = run_identity(source, shard_size, vqgan.config)
    code_type = pa.int16() if vqgan.config.n_embed <= 2**15 else pa.int32()
    writer = ShardCollector(out, run, passthrough, row_group_size, code_type, progress)
    data = EncodeData(source, out, run, shard_size, batch_size, num_workers)
    target = kwargs.pop("_target_", "pytorch_lightning.Trainer")
    callbacks = list(kwargs.pop("callbacks", None) or []) + [writer]
    trainer = instantiate({"_target_": target, **kwargs, **TRAINER_FIXED}, callbacks=callbacks,
                          _convert_="all")
    predict(trainer, CodeEncoder(vqgan), data, writer)
    return out.read_json("report.json")


def predict(trainer: pl.Trainer, module: CodeEncoder, data: EncodeData, writer: ShardCollector) -> None:
    """Lightning answers Ctrl-C with sys.exit(1) and leaves SIGINT ignored; a library call gives the
    caller back its KeyboardInterrupt and its handler."""
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        with warnings.catch_warnings():
            # the writer reads positions from the batch, and an all-bad batch rightly predicts None
            warnings.filterwarnings("ignore", "Couldn't infer the batch indices")
            warnings.filterwarnings("ignore", "predict returned None")
            trainer.predict(module, datamodule=data, return_predictions=False)
    except SystemExit:
        if isinstance(writer.exception, KeyboardInterrupt):
            raise writer.exception from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, handler)


def build_vqgan(vqgan_cfg: DictConfig, weights: Optional[str]) -> VQGAN:
    if weights is None:  # the same random weights in every process (and run), or ranks would disagree
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = instantiate(vqgan_cfg)
        warnings.warn("vqgan_weights=null: encoding with a randomly initialised VQGAN (seed 0; tests and "
                      "benchmarks only: the codes mean nothing to a trained model)", stacklevel=2)
        return model.eval()
    # `vqgan=` is the architecture of a weights file that records none (a taming .ckpt, a bare .safetensors);
    # a directory, hub repo or VQGAN.save_safetensors file carries its own
    return VQGAN.from_pretrained(weights, default_config=instantiate(vqgan_cfg.config))


def trainer_args(cfg: DictConfig) -> dict:
    """The `trainer=` group's arguments; a config without one (built by hand) names a `device`."""
    if OmegaConf.select(cfg, "trainer") is not None:
        return OmegaConf.to_container(cfg.trainer, resolve=True)
    device = OmegaConf.select(cfg, "device", default="auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"accelerator": "gpu" if str(device).startswith("cuda") else "cpu", "devices": 1}


def run(cfg: DictConfig) -> dict:
    if OmegaConf.is_missing(cfg, "vqgan_weights"):
        raise ValueError("vqgan_weights is not set: name the VQGAN your model's codes come from, e.g. "
                         "vqgan_weights=dalle-mini/vqgan_imagenet_f16_16384 (a hub repo or directory), or a "
                         ".safetensors / taming .ckpt file; vqgan_weights=null encodes with random weights "
                         "(tests only)")
    trainer = trainer_args(cfg)
    check_precision(trainer.get("precision", "32-true"))
    # the VQGAN before the input: scanning a big folder first would only defer a wrong weights path
    vqgan = build_vqgan(cfg.vqgan, cfg.vqgan_weights)
    inp = cfg.input
    source = open_source(inp.format, inp.path, list(inp.passthrough), inp.get("image_column"),
                         inp.get("caption_column"), inp.get("split", "train"), inp.get("streaming", False),
                         inp.get("cache_dir"))
    return encode_dataset(source, vqgan, cfg.output_dir, shard_size=cfg.shard_size, batch_size=cfg.batch_size,
                          num_workers=cfg.num_workers, row_group_size=cfg.row_group_size,
                          passthrough=list(inp.passthrough), progress=cfg.progress, trainer=trainer)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="encode")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    if rank_zero_only.rank == 0:
        print(f"encoded {report['encoded']} of {report['items']} images into {len(report['shards'])} shards "
              f"in {cfg.output_dir}; skipped {report['skipped']} (listed in {cfg.output_dir}/report.json)")


if __name__ == "__main__":
    main()
