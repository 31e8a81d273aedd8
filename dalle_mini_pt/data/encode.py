"""Encode image–caption pairs into VQGAN code shards, the training data of DALL·E mini.

    python -m dalle_mini_pt.data.encode input.path=images/ output_dir=data/encoded/train \\
        vqgan_weights=vqgan.safetensors [input.format=folder|tar|table] [vqgan=imagenet_f16_16384]

Items are numbered in the source's sorted order and output shard s holds items s*shard_size ..
(s+1)*shard_size - 1 (minus the bad ones), so a run that was killed and restarted writes the same shards as
one that was not. A shard appears under its final name only once complete (written to a hidden temporary
file, then renamed); a restart skips the shards that exist. Files that cannot be read as images are listed
in each shard's metadata and gathered into `report.json` next to the shards.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config_dir import CONFIG_DIR
from ..vqgan import VQGAN
from .image_sources import load_image, open_source
from .shards import META_KEY


class DecodedImages(Dataset):
    """Item i -> (i, image or None, caption, key, fields, error); runs in DataLoader workers. Any failure
    to read or decode an item is returned as its error, so one bad file never stops the run."""

    def __init__(self, source, resolution: int):
        self.source, self.resolution = source, resolution

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            sample = self.source.read(i)
            image = torch.from_numpy(load_image(sample.image, self.resolution))
            return i, image, sample.caption, sample.key, sample.fields, None
        except Exception as err:  # noqa: BLE001  (PIL raises many types for broken files)
            # without object reprs (`<_io.BytesIO at 0x...>`), so reruns write identical reports
            return i, None, None, None, None, re.sub(r" ?<[^>]*>", "", f"{type(err).__name__}: {err}")


def collate(items: list) -> dict:
    good = [it for it in items if it[5] is None]
    return {"indices": [it[0] for it in items],
            "images": torch.stack([it[1] for it in good]) if good else None,
            "rows": [{"key": it[3], "caption": it[2], **it[4]} for it in good],
            "errors": [(it[0], it[5]) for it in items if it[5] is not None]}


def shard_ranges(num_items: int, shard_size: int) -> list[range]:
    return [range(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


def shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / f"{shard:05d}.parquet"


def pending_batches(shards: dict[int, range], batch_size: int) -> list[list[int]]:
    """Batches that never straddle two shards, so a shard is complete when its last batch arrives."""
    return [list(r[i:i + batch_size]) for r in shards.values() for i in range(0, len(r), batch_size)]


def write_shard(path: Path, rows: list[dict], codes: np.ndarray, meta: dict, row_group_size: int,
                code_type: pa.DataType) -> None:
    columns = {"key": pa.array([r["key"] for r in rows], pa.string()),
               "caption": pa.array([r["caption"] for r in rows], pa.string()),
               "encoding": pa.array(codes.tolist(), type=pa.list_(code_type))}
    for name in meta["passthrough"]:
        columns[name] = pa.array([r.get(name) for r in rows])
    table = pa.table(columns)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_size)
    os.replace(tmp, path)  # atomic: a reader sees the whole shard or none of it


def shard_meta(path: Path) -> dict:
    """The run settings a shard of ours records; a cut-off or foreign file in output_dir is named."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: cut off or not parquet ({type(err).__name__}: {err}); it is no shard this "
                         "tool finished (those appear whole, by rename). Delete it and run again: it is "
                         "encoded anew") from None
    if META_KEY not in metadata:
        raise ValueError(f"{path} was not written by this encoder (its schema has no "
                         f"{META_KEY.decode()} metadata), so it cannot be resumed or reported on. Encode "
                         "into an empty output_dir, or move the foreign file away")
    return json.loads(metadata[META_KEY])


def check_resumable(output_dir: Path, shards: list[range], run: dict) -> dict[int, range]:
    """Shards still to write; refuses an output_dir holding shards of a different run."""
    todo = {}
    for s, r in enumerate(shards):
        path = shard_path(output_dir, s)
        if not path.exists():
            todo[s] = r
            continue
        saved = shard_meta(path)["run"]
        if saved != run:
            diff = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
            raise ValueError(f"{path} was written by another run ({diff}, shard's vs now); encode into an "
                             "empty output_dir or restore the settings it was made with")
    return todo


class ShardWriter:
    """Collects the encoded rows of each shard as batches arrive in order and writes it when complete."""

    def __init__(self, output_dir: Path, shards: dict[int, range], source, run: dict, passthrough,
                 row_group_size: int, code_type: pa.DataType):
        self.output_dir, self.shards, self.source, self.run = output_dir, shards, source, run
        self.passthrough, self.row_group_size, self.code_type = list(passthrough), row_group_size, code_type
        self.shard_of = {r.start: s for s, r in shards.items()}
        self.current, self.rows, self.codes, self.bad, self.seen = None, [], [], [], 0

    def add(self, batch: dict, codes: Optional[np.ndarray]) -> None:
        if self.current is None:
            self.current = self.shard_of[batch["indices"][0]]
        self.rows += batch["rows"]
        if codes is not None:
            self.codes.append(codes)
        self.bad += [{"item": self.source.name(i), "error": e} for i, e in batch["errors"]]
        self.seen += len(batch["indices"])
        if self.seen == len(self.shards[self.current]):
            self._flush()

    def _flush(self) -> None:
        r = self.shards[self.current]
        meta = {"run": self.run, "items": [r.start, r.stop], "skipped": self.bad,
                "passthrough": self.passthrough}
        codes = np.concatenate(self.codes) if self.codes else np.zeros((0, 0), np.int64)
        write_shard(shard_path(self.output_dir, self.current), self.rows, codes, meta, self.row_group_size,
                    self.code_type)
        self.current, self.rows, self.codes, self.bad, self.seen = None, [], [], [], 0


def write_report(output_dir: Path, num_shards: int, num_items: int) -> dict:
    metas = [shard_meta(shard_path(output_dir, s)) for s in range(num_shards)]
    bad = [b for m in metas for b in m["skipped"]]
    report = {"items": num_items, "encoded": num_items - len(bad), "skipped": len(bad), "bad": bad,
              "shards": [shard_path(output_dir, s).name for s in range(num_shards)]}
    tmp = output_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, output_dir / "report.json")
    return report


def encode_dataset(source, vqgan: VQGAN, output_dir, *, shard_size: int = 10000, batch_size: int = 64,
                   num_workers: int = 4, row_group_size: int = 1000, passthrough=(),
                   progress: bool = True) -> dict:
    """Encode every item of `source` into `output_dir`/NNNNN.parquet; returns the report (also written
    to report.json). Shards already in output_dir from an interrupted run of the same settings are kept."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".*.parquet.tmp"):  # left by a run killed while writing
        stale.unlink()
    cfg = vqgan.config
    run = {"num_items": len(source), "shard_size": shard_size, "resolution": cfg.resolution,
           "codebook_size": cfg.n_embed, "codes_per_image": cfg.codes_per_image,
           "pixel_range": cfg.pixel_range}
    shards = shard_ranges(len(source), shard_size)
    todo = check_resumable(output_dir, shards, run)
    code_type = pa.int16() if cfg.n_embed <= 2**15 else pa.int32()
    writer = ShardWriter(output_dir, todo, source, run, passthrough, row_group_size, code_type)
    loader = DataLoader(DecodedImages(source, cfg.resolution),
                        batch_sampler=pending_batches(todo, batch_size),
                        num_workers=num_workers, collate_fn=collate, pin_memory=vqgan.device.type == "cuda")
    with tqdm(total=sum(map(len, todo.values())), unit="img", disable=not progress, smoothing=0.1) as bar:
        for batch in loader:
            codes = None
            if batch["images"] is not None:
                codes = vqgan.encode(batch["images"].to(vqgan.device, non_blocking=True)).cpu().numpy()
            writer.add(batch, codes)
            bar.update(len(batch["indices"]))
    return write_report(output_dir, len(shards), len(source))


def build_vqgan(vqgan_cfg: DictConfig, weights: Optional[str], device: str) -> VQGAN:
    model = instantiate(vqgan_cfg)
    if weights is None:
        warnings.warn("vqgan_weights=null: encoding with a randomly initialised VQGAN (tests and benchmarks "
                      "only; the codes mean nothing to a trained model)", stacklevel=2)
    elif str(weights).endswith(".safetensors"):
        model = VQGAN.from_safetensors(weights, model.config)
    elif str(weights).endswith(".ckpt"):
        model = VQGAN.from_taming_checkpoint(weights, model.config)
    else:  # a saved directory or hub repo carries its own architecture, so `vqgan=` is not consulted
        model = VQGAN.from_pretrained(weights)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def run(cfg: DictConfig) -> dict:
    if OmegaConf.is_missing(cfg, "vqgan_weights"):
        raise ValueError("vqgan_weights is not set: name the VQGAN your model's codes come from, e.g. "
                         "vqgan_weights=dalle-mini/vqgan_imagenet_f16_16384 (a hub repo or directory), or a "
                         ".safetensors / taming .ckpt file; vqgan_weights=null encodes with random weights "
                         "(tests only)")
    # the VQGAN before the input: scanning a big folder first would only defer a wrong weights path
    vqgan = build_vqgan(cfg.vqgan, cfg.vqgan_weights, cfg.device)
    source = open_source(cfg.input.format, cfg.input.path, list(cfg.input.passthrough),
                         cfg.input.image_column, cfg.input.caption_column)
    return encode_dataset(source, vqgan, cfg.output_dir, shard_size=cfg.shard_size, batch_size=cfg.batch_size,
                          num_workers=cfg.num_workers, row_group_size=cfg.row_group_size,
                          passthrough=list(cfg.input.passthrough), progress=cfg.progress)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="encode")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    print(f"encoded {report['encoded']} of {report['items']} images into {len(report['shards'])} shards in "
          f"{cfg.output_dir}; skipped {report['skipped']} (listed in {cfg.output_dir}/report.json)")


if __name__ == "__main__":
    main()
