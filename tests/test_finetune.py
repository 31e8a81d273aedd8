"""Issue 14: fine-tuning from a checkpoint (a tiny one the reference itself saved) through the real entry
points, folder → encode → fine-tune → export → generate; LoRA; eval; the optuna sweep; and the fidelity fixes
found in the released checkpoints' formats."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import compose_train
from huggingface_hub import constants
from hydra.utils import instantiate
from local_hub import LocalHub
from omegaconf import OmegaConf

from dalle_mini_pt.data.tiny_dataset import train_tokenizer
from dalle_mini_pt.export import load_trained
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.pipeline import DalleMiniPipeline
from dalle_mini_pt.shapes.scenes import make_split, write_folder
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import build
from dalle_mini_pt.vqgan import VQGAN

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("DALLE_MINI_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def command(module: str, *args) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{module} {args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def reference_checkpoint(out: Path, *args) -> Path:
    if not REF_PYTHON.exists():
        pytest.skip(f"reference environment missing ({REF_PYTHON}); build it with scripts/reference_env.sh")
    proc = subprocess.run([str(REF_PYTHON), str(ROOT / "scripts" / "reference_checkpoint.py"), "--out",
                           str(out),
                           *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A reference checkpoint with its captions' tokenizer, a tiny VQGAN in [0, 1] (as the released models'
    VQGAN works), and a folder of pictures encoded with it by the encoder tool."""
    root = tmp_path_factory.mktemp("finetune")
    ref = reference_checkpoint(root / "reference")
    captions, _ = make_split("train", 200, resolution=32)
    train_tokenizer(captions).save_pretrained(ref)
    torch.manual_seed(0)
    tiny = OmegaConf.load(ROOT / "conf" / "vqgan" / "tiny.yaml")
    tiny.config.pixel_range = "zero_to_one"
    instantiate(tiny).save_pretrained(root / "vqgan")
    for split, n in (("train", 24), ("validation", 4)):
        write_folder(root / "images" / split, split, n, resolution=32, seed=1)
        command("dalle_mini_pt.data.encode", f"input.path={root / 'images' / split}",
                f"output_dir={root / 'encoded' / split}", f"vqgan_weights={root / 'vqgan'}", "num_workers=0",
                "progress=false", f"hydra.run.dir={root / 'logs' / split}")
    return root


def finetune(chain: Path, run: Path, *overrides) -> Path:
    command("dalle_mini_pt.train", "+experiment=finetune_debug", f"model.init_from={chain / 'reference'}",
            f"data.train_files={chain / 'encoded' / 'train'}",
            f"data.val_files={chain / 'encoded' / 'validation'}",
            f"hydra.run.dir={run}", *overrides)
    return run


def logged(run: Path, key: str) -> list[tuple[int, float]]:
    rows = []
    for path in sorted(run.glob("csv/version_*/metrics.csv")):
        rows += [(int(r["step"]), float(r[key])) for r in csv.DictReader(path.open()) if r.get(key)]
    return rows


def validation_batch(chain: Path) -> dict:
    cfg = compose_train(["+experiment=finetune_debug", f"model.init_from={chain / 'reference'}",
                         f"data.train_files={chain / 'encoded' / 'train'}",
                         f"data.val_files={chain / 'encoded' / 'validation'}"], output_dir=chain / "unused")
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    (batch,) = list(datamodule.val_dataloader())  # 4 scenes: one batch
    return batch


@pytest.mark.slow
def test_folder_to_finetuned_model_to_images_through_the_entry_points(chain, tmp_path):
    run = finetune(chain, tmp_path / "run")
    val = logged(run, "val/loss")
    assert [step for step, _ in val] == [0, 4, 9]  # before training, then at steps 5 and 10
    reference = DalleBart.from_pretrained(chain / "reference")
    batch = validation_batch(chain)
    with torch.no_grad():
        start = reference.loss(batch["input_ids"], batch["attention_mask"], batch["labels"]).item()
    assert abs(val[0][1] - start) < 1e-5  # it starts at the reference checkpoint's loss
    assert val[-1][1] < val[0][1]  # and falls

    evaluated = command("dalle_mini_pt.eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                        "data=streaming",
                        f"data.val_files={chain / 'encoded' / 'validation'}",
                        f"data.tokenizer={chain / 'reference'}",
                        "data.batch_size=4", "data.num_workers=0", f"hydra.run.dir={tmp_path / 'eval'}")
    loss = float(evaluated.split("test/loss=")[1].split(",")[0])
    assert abs(loss - val[-1][1]) < 1e-5  # eval's loss on the validation shards is the trainer's
    perplexity = float(evaluated.split("test/perplexity=")[1].split()[0])
    assert abs(perplexity - torch.tensor(loss).exp().item()) < 1e-3

    command("dalle_mini_pt.export", run / "checkpoints" / "last.ckpt", tmp_path / "model", "--tokenizer",
            chain / "reference")
    printed = command("dalle_mini_pt.generate", "a red circle in the top left", "--model", tmp_path / "model",
                      "--vqgan", chain / "vqgan", "--num-images", "2", "--condition-scale", "1",
                      "--seed", "0",
                      "--out", tmp_path / "grid.png")
    assert "grid.png" in printed and (tmp_path / "grid.png").is_file()


@pytest.mark.slow
def test_lora_trains_only_adapters_and_export_merges_them(chain, tmp_path):
    run = finetune(chain, tmp_path / "run", "model.lora={r: 4, alpha: 8}", "model.freeze=[embeddings]")
    hparams = yaml.safe_load(next(run.glob("csv/version_*/hparams.yaml")).read_text())
    cfg = compose_train(["+experiment=finetune_debug", f"model.init_from={chain / 'reference'}",
                         f"data.train_files={chain / 'encoded' / 'train'}", "model.lora={r: 4, alpha: 8}",
                         f"data.val_files={chain / 'encoded' / 'validation'}"], output_dir=tmp_path / "build")
    _, module, _ = build(cfg)
    adapters = sum(p.numel() for n, p in module.net.named_parameters() if "lora_" in n)
    assert hparams["params/trainable"] == adapters > 0  # the adapters and nothing else
    assert hparams["params/total"] == sum(p.numel() for p in module.parameters())

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    module.load_state_dict(ckpt["state_dict"])
    merged = load_trained(run / "checkpoints" / "last.ckpt")
    assert not any("lora" in name for name in merged.state_dict())
    batch = validation_batch(chain)
    module.eval()
    with torch.no_grad():
        adapted = module.net(batch["input_ids"], batch["attention_mask"],
                             module.net.shift_right(batch["labels"]))
        plain = merged(batch["input_ids"], batch["attention_mask"], merged.shift_right(batch["labels"]))
    assert (adapted - plain).abs().max() < 1e-5
    with pytest.raises(ValueError, match="holds LoRA adapters.*python -m dalle_mini_pt.export"):
        DalleBart.from_pretrained(run / "checkpoints" / "last.ckpt")


def test_a_checkpoint_of_another_architecture_names_each_key(tmp_path):
    ref = reference_checkpoint(tmp_path / "reference")
    cfg = compose_train(["+experiment=debug", f"model.init_from={ref}", "model.net.config.d_model=128",
                         "model.net.config.decoder_layers=3"], output_dir=tmp_path)
    with pytest.raises(Exception,
                       match=r"d_model: 128 in the model group, 64 in .*decoder_layers: 3 in the model "
                                         r"group, 2 in .*set model\.net\.config\.d_model=64 "
                                         r"model\.net\.config\.decoder_layers=2"):
        instantiate(cfg.model, optimizer=None)


def test_sharded_flax_checkpoints_load_as_the_whole_one(tmp_path):
    whole = DalleBart.from_pretrained(reference_checkpoint(tmp_path / "whole"))
    sharded_dir = reference_checkpoint(tmp_path / "sharded", "--max-shard-size", "100KB")
    assert (sharded_dir / "flax_model.msgpack.index.json").is_file()
    assert len(list(sharded_dir.glob("flax_model-*-of-*.msgpack"))) > 1
    sharded = DalleBart.from_pretrained(sharded_dir)
    for (k, a), (_, b) in zip(whole.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_a_three_trial_optuna_sweep_reports_its_best_value(data_dir, tmp_path):
    command("dalle_mini_pt.train", "-m", "+experiment=debug", "hparams_search=lr_optuna",
            f"paths.data_dir={data_dir}",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3", "trainer.max_steps=6",
            "trainer.val_check_interval=6", "callbacks=none", f"hydra.sweep.dir={tmp_path}")
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    losses = [v for _, v in logged(tmp_path / "0", "val/loss") + logged(tmp_path / "1", "val/loss")
              + logged(tmp_path / "2", "val/loss")]
    assert len(losses) == 3 and results["best_value"] == pytest.approx(min(losses), abs=1e-6)
    assert set(results["best_params"]) == {"optimizer.lr", "scheduler.warmup_steps"}


# --- the 2021 tokenizer's extra <mask> row, and prompts that produce it -------------------------------------

def one_larger_tokenizer(tmp_path, tiny_data) -> tuple[Path, int]:
    """A tokenizer one entry larger than the model embeds, the extra id a special token (BART-large-cnn's
    `<mask>` against the 2021 model)."""
    tok = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16).tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<extra_mask>"]})
    tok.save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "tokenizer", len(tok) - 1


def test_the_2021_recipe_takes_a_tokenizer_one_entry_larger_than_its_embedding(tiny_data, tmp_path):
    path, rows = one_larger_tokenizer(tmp_path, tiny_data)
    cfg = compose_train(["+experiment=tpu", f"data.train_files={tiny_data}/train.parquet",
                         f"data.val_files={tiny_data}/val.parquet", f"data.tokenizer={path}",
                         "data.num_workers=0",
                         "model.net.pretrained_bart=null", f"model.net.config.encoder_vocab_size={rows}"],
                        output_dir=tmp_path)
    datamodule = instantiate(cfg.data)
    with torch.device("meta"):
        model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer),
                            scheduler=instantiate(cfg.scheduler))
    from dalle_mini_pt.train import check_compatible

    check_compatible(datamodule, model)  # accepted: the extra id is a special token
    assert datamodule.tokenizer(["a red square"])["input_ids"].max() < rows
    with pytest.raises(ValueError, match=r"text 'a <extra_mask> square' contains '<extra_mask>', a token the "
                                         r"model has no embedding row for"):
        datamodule.tokenizer(["a red square", "a <extra_mask> square"])


def test_generation_checks_the_tokenizer_against_the_embedding(tiny_data, tmp_path):
    from test_hub_mixin import component

    path, rows = one_larger_tokenizer(tmp_path, tiny_data)
    tokenizer = TextTokenizer.from_pretrained(str(path), 16)
    torch.manual_seed(0)
    from helpers import tiny_config

    pipe = DalleMiniPipeline(DalleBart(tiny_config(image_length=256, image_vocab_size=32,
                                                   encoder_vocab_size=rows)),
                             tokenizer, component("vqgan"))
    assert len(pipe(["a red square"], num_images=1, seed=0)[0].images) == 1
    with pytest.raises(ValueError, match="contains '<extra_mask>'"):
        pipe(["a <extra_mask> square"], num_images=1, seed=0)
    small = DalleBart(tiny_config(image_length=256, image_vocab_size=32, encoder_vocab_size=100))
    with pytest.raises(ValueError, match=r"ids \[100, 101, .* are ordinary tokens"):
        DalleMiniPipeline(small, TextTokenizer.from_pretrained(str(path), 16), component("vqgan"))


# --- revisions, the word-frequency file, pixel ranges
# --------------------------------------------------------

def test_the_reference_vqgan_loads_at_its_pinned_commit_unless_told(tmp_path, monkeypatch, tiny_data):
    from test_hub_mixin import component

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pinned = "e93a26e7707683d349bf5d5c41c5b0ef69b677a9"
    with LocalHub(tmp_path / "hub") as hub:
        component("vqgan").save_pretrained(hub.root / "dalle-mini" / "vqgan_imagenet_f16_16384")
        VQGAN.from_pretrained("dalle-mini/vqgan_imagenet_f16_16384", endpoint=hub.url,
                              cache_dir=tmp_path / "c1")
        assert hub.requests and all(f"/resolve/{pinned}/" in path for _, path in hub.requests)
        hub.requests.clear()
        VQGAN.from_pretrained("dalle-mini/vqgan_imagenet_f16_16384", revision="main", endpoint=hub.url,
                              cache_dir=tmp_path / "c2")
        assert all("/resolve/main/" in path for _, path in hub.requests)

        model = tmp_path / "model"
        DalleBart(compose_config()).save_pretrained(model, tokenizer=str(tiny_data / "tokenizer"))
        hub.requests.clear()
        pipe = DalleMiniPipeline.from_components(model, "dalle-mini/vqgan_imagenet_f16_16384",
                                                 vqgan_revision="v2",
                                                 endpoint=hub.url, cache_dir=tmp_path / "c3")
        assert isinstance(pipe.vqgan, VQGAN) and all("/resolve/v2/" in path for _, path in hub.requests)


def compose_config(**changes):
    from helpers import tiny_config

    torch.manual_seed(0)
    return tiny_config(image_length=256, image_vocab_size=32, **changes)


def test_a_model_directory_with_the_word_frequency_file_splits_hashtags(tmp_path, tiny_data):
    from test_hub_mixin import component

    model = tmp_path / "model"
    DalleBart(compose_config(normalize_text=True)).save_pretrained(model,
                                                                   tokenizer=str(tiny_data / "tokenizer"))
    vqgan = tmp_path / "vqgan"
    component("vqgan").save_pretrained(vqgan)
    assert DalleMiniPipeline.from_components(model, vqgan).normalizer("#redsquare") == " redsquare"
    (model / "enwiki-words-frequency.txt").write_text("red 100\nsquare 50\n")
    assert DalleMiniPipeline.from_components(model, vqgan).normalizer("#redsquare") == " red square"


def test_codes_and_vqgans_of_another_pixel_range_are_refused(tmp_path, tiny_data, data_dir):
    from test_hub_mixin import component

    model = DalleBart(compose_config(vqgan_pixel_range="zero_to_one"))
    tokenizer = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16)
    with pytest.raises(ValueError, match=r"fed zero_to_one pixels, but this VQGAN works in minus_one_to_one.*"
                                         r"pixel_range='zero_to_one'"):
        DalleMiniPipeline(model, tokenizer, component("vqgan"))

    images = tmp_path / "images"
    write_folder(images, "train", 8, resolution=32)
    component("vqgan").save_pretrained(tmp_path / "vqgan")  # minus_one_to_one, as conf/vqgan/tiny.yaml
    command("dalle_mini_pt.data.encode", f"input.path={images}", f"output_dir={tmp_path / 'encoded'}",
            f"vqgan_weights={tmp_path / 'vqgan'}", "num_workers=0", "progress=false",
            f"hydra.run.dir={tmp_path / 'logs'}")
    cfg = compose_train(["+experiment=debug", f"paths.data_dir={data_dir}",
                         f"data.train_files={tmp_path / 'encoded'}",
                         "+model.net.config.vqgan_pixel_range=zero_to_one"], output_dir=tmp_path / "run")
    datamodule, _, _ = build(cfg)
    with pytest.raises(ValueError,
                       match=r"00000\.parquet was encoded by a VQGAN fed minus_one_to_one pixels"):
        datamodule.setup("fit")


def test_every_finetune_experiment_composes(tiny_data, tmp_path):
    for name in ("finetune_debug", "finetune_mini", "finetune_mega"):
        cfg = compose_train([f"+experiment={name}", f"data.train_files={tiny_data}/train.parquet"],
                            output_dir=tmp_path)
        assert cfg.validate_first and cfg.data.tokenizer == cfg.model.init_from
        assert cfg.model.net.init_from == cfg.model.init_from and cfg.model.lora is None


def test_the_readme_memory_table_is_the_computed_one():
    from training_memory import table

    assert table() in (ROOT / "README.md").read_text()
