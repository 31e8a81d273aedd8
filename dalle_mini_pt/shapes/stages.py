"""The stages of the embedded default, each cached: a complete text-to-image run on the shape scenes.

Stages, each its own process and (for the three models) its own Hydra experiment and Lightning run:
  vqgan      python -m dalle_mini_pt.train +experiment=shapes_vqgan        → vqgan/model
  data       the scenes as an image folder, a caption tokenizer, then the encoder tool → data/encoded
  dallebart  python -m dalle_mini_pt.train +experiment=shapes_dallebart    → dallebart/model (exported)
  clip       python -m dalle_mini_pt.train +experiment=shapes_clip         → clip/model
  pipeline   the four trained components saved as one pipeline directory  → pipeline/
  evaluate   python -m dalle_mini_pt.shapes.evaluate --pipeline pipeline/  → evaluate/report.md, grids

A stage that finished writes `done.json` with a fingerprint of its command and of the stages it read; a re-run
skips every stage whose fingerprint is unchanged and redoes the others (and everything downstream of them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config_dir import CONFIG_DIR


class Stage:
    """One cached step: `run()` happens only when the fingerprint in `dir/done.json` differs."""

    def __init__(self, out: Path, name: str, spec: dict, upstream: tuple["Stage", ...] = ()):
        self.name, self.dir = name, out / name
        payload = json.dumps({"spec": spec, "upstream": [s.fingerprint for s in upstream]}, sort_keys=True)
        self.fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:16]
        self.status, self.seconds = "pending", 0.0

    @property
    def done(self) -> bool:
        marker = self.dir / "done.json"
        return marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == self.fingerprint

    def __call__(self, run) -> None:
        if self.done:
            self.status = "cached"
            print(f"[{self.name}] cached in {self.dir} (delete it to redo the stage)", flush=True)
            return
        # a changed or interrupted stage: its partial outputs must not mix with new ones
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        print(f"[{self.name}] running → {self.dir}", flush=True)
        start = time.perf_counter()
        run()
        self.seconds, self.status = time.perf_counter() - start, "ran"
        (self.dir / "done.json").write_text(json.dumps({"fingerprint": self.fingerprint,
                                                        "seconds": round(self.seconds, 1)}) + "\n")


def train_spec(overrides) -> dict:
    """A model stage's overrides and the training config they compose to, so editing an experiment file
    also changes the stage's fingerprint (code changes do not: delete the stage's directory to redo it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ..training.preflight import check_finite_options

    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():  # inside this module's @hydra.main
        cfg = compose("train", overrides=overrides)
    else:  # called from Python, e.g. notebooks/train.ipynb
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    check_finite_options(cfg, f"the stage {' '.join(overrides)}: ")  # before any stage runs
    return {"overrides": overrides, "config": OmegaConf.to_yaml(cfg)}


def _python(*args) -> None:
    """A stage process; its progress bars go straight to this terminal."""
    cmd = [sys.executable, *map(str, args)]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"stage command failed: {' '.join(cmd)}\n"
                         "(finished stages stay cached; fix and re-run)")


def _train(stage: Stage, overrides: list[str]) -> None:
    _python("-m", "dalle_mini_pt.train", *overrides, f"hydra.run.dir={stage.dir}")


def make_data(stage: Stage, cfg: DictConfig, vqgan_dir: Path) -> None:
    from ..data.tiny_dataset import train_tokenizer
    from .scenes import write_folder

    scenes = OmegaConf.to_container(cfg.scenes)  # two-object scenes, captions with an attribute unsaid
    for split, folder, n in (("train", "train", cfg.n_train), ("validation", "val", cfg.n_val)):
        options = scenes if split == "train" else {}  # validation measures the one-object scenes asked for
        write_folder(stage.dir / "images" / folder, split, n, seed=cfg.seed, **options)
        _python("-m", "dalle_mini_pt.data.encode", f"input.path={stage.dir / 'images' / folder}",
                f"output_dir={stage.dir / 'encoded' / folder}", f"vqgan_weights={vqgan_dir}",
                f"hydra.run.dir={stage.dir / 'encode_logs' / folder}", *cfg.stages.encode)
    # the captions just written, not a second render of every scene
    captions = [p.read_text().strip() for p in sorted((stage.dir / "images" / "train").glob("*.txt"))]
    train_tokenizer(captions, cfg.tokenizer_vocab_size).save_pretrained(stage.dir / "tokenizer")


# conf/train.yaml's own seed: the pipeline's seed 0 trains every stage as the measured default did
TRAIN_SEED_BASE = 42


def stage_overrides(cfg: DictConfig) -> dict[str, list[str]]:
    """Each model stage's overrides with the pipeline's `seed` in them, last so that it wins: the training
    run's (initial weights, batch order) and, where a stage renders its own scenes (`data=shapes_images`,
    the VQGAN and CLIP), the scenes'. The DalleBart stage's scenes are `make_data`'s, drawn from it too."""
    train_seed = f"seed={TRAIN_SEED_BASE + cfg.seed}"
    return {"vqgan": [*cfg.stages.vqgan, train_seed, f"data.seed={cfg.seed}"],
            "dallebart": [*cfg.stages.dallebart, train_seed],
            "clip": [*cfg.stages.clip, train_seed, f"data.seed={cfg.seed}"]}


def run_pipeline(cfg: DictConfig) -> list[Stage]:
    from ..training.preflight import check_finite_options

    check_finite_options(cfg)
    out = Path(cfg.out_dir).resolve()
    stages = stage_overrides(cfg)
    vqgan = Stage(out, "vqgan", train_spec(stages["vqgan"]))
    data = Stage(out, "data", {"n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.seed,
                               "scenes": OmegaConf.to_container(cfg.scenes),
                               "vocab": cfg.tokenizer_vocab_size, "encode": list(cfg.stages.encode)},
                 (vqgan,))
    dallebart = Stage(out, "dallebart", train_spec(stages["dallebart"]), (data,))
    clip = Stage(out, "clip", train_spec(stages["clip"]))
    sampling = {k: v for k, v in OmegaConf.to_container(cfg.evaluate, resolve=True).items() if k != "prompts"}
    pipeline = Stage(out, "pipeline", sampling, (vqgan, dallebart, clip))
    evaluate = Stage(out, "evaluate", {"prompts": cfg.evaluate.prompts}, (pipeline,))

    vqgan(lambda: _train(vqgan, [*stages["vqgan"], f"model.save_dir={vqgan.dir / 'model'}"]))
    data(lambda: make_data(data, cfg, vqgan.dir / "model"))

    def train_dallebart():
        encoded = data.dir / "encoded"
        _train(dallebart, [*stages["dallebart"], f"data.train_files={encoded / 'train'}/*.parquet",
                           f"data.val_files={encoded / 'val'}/*.parquet",
                           f"data.tokenizer={data.dir / 'tokenizer'}"])
        _python("-m", "dalle_mini_pt.export", dallebart.dir / "checkpoints" / "last.ckpt",
                dallebart.dir / "model", "--tokenizer", data.dir / "tokenizer")

    dallebart(train_dallebart)
    clip(lambda: _train(clip, [*stages["clip"], f"model.save_dir={clip.dir / 'model'}"]))
    pipeline(lambda: assemble(pipeline.dir, vqgan.dir / "model", dallebart.dir / "model", clip.dir / "model",
                              sampling))
    evaluate(lambda: _python("-m", "dalle_mini_pt.shapes.evaluate", "--pipeline", pipeline.dir,
                             "--out", evaluate.dir, f"--prompts={cfg.evaluate.prompts}"))
    return [vqgan, data, dallebart, clip, pipeline, evaluate]


def assemble(out: Path, vqgan: Path, dallebart: Path, clip: Path, sampling: dict) -> None:
    """The trained components as one pipeline directory, sampling as the evaluation does: what the web app
    and `generate --pipeline` serve."""
    from ..generation_config import GenerationConfig
    from ..pipeline import DalleMiniPipeline

    pipe = DalleMiniPipeline.from_components(dallebart, vqgan=vqgan, clip=clip)
    pipe.generation_config = GenerationConfig.from_dict({k: v for k, v in sampling.items() if v is not None})
    pipe.save_pretrained(out)


def summary(stages: list[Stage]) -> str:
    report = stages[-1].dir / "report.md"
    lines = ["| stage | status | seconds | output |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.dir} |" for s in stages]
    return "\n".join(lines) + "\n\n" + (report.read_text() if report.is_file() else "")
