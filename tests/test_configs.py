import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import compose_train
from hydra.utils import instantiate

from dalle_mini_pt.train import CONFIG_DIR, build, check_compatible, instantiate_group
from dalle_mini_pt.training.xla_precision import instantiate_trainer

EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))


def local_data(tiny):
    # experiments name real shards and hub tokenizers; point them at the local tiny set instead
    return [f"data.train_files={tiny}/train.parquet", f"data.val_files={tiny}/val.parquet",
            f"data.tokenizer={tiny}/tokenizer", "model.net.pretrained_bart=null", "data.num_workers=0",
            "model.init_from=null"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tiny_data, tmp_path, capsys):
    cfg = compose_train([f"+experiment={experiment}"], output_dir=tmp_path)
    if "train_files" in cfg.data:  # text/code experiments name real shards: use the local tiny set
        cfg = compose_train([f"+experiment={experiment}", *local_data(tiny_data)], output_dir=tmp_path)
    datamodule = instantiate(cfg.data)
    with torch.device("meta"):  # full-size models cost no memory here
        model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer),
                            scheduler=instantiate(cfg.scheduler))
    check_compatible(datamodule, model)
    callbacks = instantiate_group(cfg.callbacks)
    if cfg.trainer.accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        with capsys.disabled():
            print(f"\n[{experiment}] Trainer not built: accelerator=tpu needs torch_xla (the [tpu] extra)")
        pytest.skip("torch_xla is not installed: the TPU Trainer cannot be built on this machine")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with capsys.disabled():
            print(f"\n[{experiment}] Trainer not built: accelerator=gpu needs a CUDA device")
        pytest.skip("no CUDA device: the GPU Trainer cannot be built on this machine")
    trainer = instantiate_trainer(cfg.trainer, callbacks=callbacks, logger=False)
    # every experiment stops: Lightning trains forever when max_steps and max_epochs are both -1
    assert trainer.max_steps >= 1 or trainer.max_epochs >= 1, (trainer.max_steps, trainer.max_epochs)


def test_tpu_experiment_is_the_2021_recipe(tiny_data, tmp_path):
    cfg = compose_train(["+experiment=tpu"], output_dir=tmp_path)
    assert cfg.trainer.devices == 8 and cfg.trainer.accelerator == "tpu"
    assert cfg.data.batch_size == 56 and cfg.trainer.accumulate_grad_batches == 8
    assert cfg.optimizer.lr == 0.005 and cfg.optimizer.scale_parameter and cfg.optimizer.clip_threshold == 1.0
    assert cfg.optimizer.decay_rate == -0.8 and cfg.scheduler.warmup_steps == 250
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.net.pretrained_bart == "facebook/bart-large-cnn"
    assert cfg.model.net.config.ln_positions == "postln" and cfg.model.net.config.max_text_length == 128


@pytest.mark.parametrize("override, message", [
    ("data.text_length=64", "data.text_length=64 exceeds"),
    ("data.train_files=/nonexistent/*.parquet", "data.train_files"),
    ("data.blank_caption_prob=1.5", "blank_caption_prob"),
    ("model.net.config.encoder_vocab_size=100", "encoder_vocab_size"),
    ("model.net.config.ln_positions=sandwich", "ln_positions"),
])
def test_invalid_values_fail_early_naming_the_key(override, message, data_dir, tmp_path):
    cfg = compose_train(["+experiment=debug", f"paths.data_dir={data_dir}", override], output_dir=tmp_path)
    with pytest.raises(Exception, match=message):
        build(cfg)


def test_scheduler_and_codes_errors(data_dir, tmp_path):
    cfg = compose_train(["+experiment=debug", f"paths.data_dir={data_dir}", "scheduler.decay=sideways"],
                        output_dir=tmp_path)
    datamodule, model, trainer = build(cfg)
    with pytest.raises(ValueError, match="scheduler.decay='sideways'"):
        trainer.fit(model, datamodule=datamodule)

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"caption": ["x"], "encoding": [[40] * 256]}), bad)
    cfg = compose_train(["+experiment=debug", f"paths.data_dir={data_dir}", f"data.train_files={bad}"],
                        output_dir=tmp_path)
    datamodule, _, _ = build(cfg)
    with pytest.raises(ValueError, match="bad.parquet row 0: codes outside the codebook 0..31"):
        datamodule.setup("fit")
