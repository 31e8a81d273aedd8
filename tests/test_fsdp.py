"""+experiment=mega_gpu: dalle-mega with trainer=fsdp builds on the meta device, the strategy wraps one FSDP
unit per transformer layer, and the parameter bytes each of 8 GPUs holds under full sharding are reported."""

import math

import pytest
import torch
from helpers import compose_train
from hydra.utils import instantiate
from pytorch_lightning.strategies import FSDPStrategy

from dalle_mini_pt.layers import DecoderLayer, EncoderLayer

GPUS = 8
GIB = 2 ** 30


def fsdp_units(model: torch.nn.Module, classes: set) -> dict[str, int]:
    """Parameters per FSDP unit: each wrapped layer, and the root holding everything else."""
    units, inside = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, tuple(classes)):
            units[name] = sum(p.numel() for p in module.parameters())
            inside.update(id(p) for p in module.parameters())
    units["<root>"] = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return units


def test_mega_fsdp_config_shards_one_unit_per_layer(tmp_path, capsys):
    cfg = compose_train(["+experiment=mega_gpu"], output_dir=tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert set(policy._module_classes) == {EncoderLayer, DecoderLayer}
    assert strategy.sharding_strategy.name == "FULL_SHARD"

    with torch.device("meta"):
        module = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer),
                             scheduler=instantiate(cfg.scheduler))
    net = module.net
    assert all(p.is_meta for p in net.parameters())
    units = fsdp_units(net, set(policy._module_classes))
    layers = cfg.model.net.config.encoder_layers + cfg.model.net.config.decoder_layers
    assert len(units) == layers + 1
    total = sum(units.values())
    assert total == sum(p.numel() for p in net.parameters()) and 2.4e9 < total < 2.8e9

    # FULL_SHARD flattens each unit and pads it to a multiple of the world size; fp32 master weights
    per_device = sum(math.ceil(n / GPUS) for n in units.values()) * 4
    largest = max(units.values())
    rows = [("parameters (all ranks)", f"{total / 1e9:.3f} B", f"{total * 4 / GIB:.2f} GiB"),
            (f"sharded, per device (/{GPUS})", f"{per_device / 4 / 1e6:.1f} M",
             f"{per_device / GIB:.2f} GiB"),
            ("+ gradients (fp32 shards)", "", f"{per_device / GIB:.2f} GiB"),
            ("+ largest unit gathered (bf16)", f"{largest / 1e6:.1f} M", f"{largest * 2 / GIB:.2f} GiB"),
            ("FSDP units", f"{layers} layers + root", f"root {units['<root>'] / 1e6:.1f} M params")]
    with capsys.disabled():
        print(f"\ndalle-mega, trainer=fsdp, {GPUS} GPUs, FULL_SHARD, fp32 parameters")
        for label, count, size in rows:
            print(f"  {label:<32} {count:>20} {size:>26}")
    assert per_device == pytest.approx(total * 4 / GPUS, rel=1e-3)


def test_fsdp_activation_checkpointing_option(tmp_path):
    cfg = compose_train(["+experiment=mega_gpu",
                         "trainer.strategy.activation_checkpointing_policy=${trainer.strategy.auto_wrap_policy}"],
                        output_dir=tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    policy = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert set(policy._module_classes) == {EncoderLayer, DecoderLayer}


def test_gpu_experiment_is_mini_in_bf16_mixed(tmp_path):
    cfg = compose_train(["+experiment=gpu"], output_dir=tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.net.config.d_model == 1024 and cfg.model.net.config.decoder_layers == 12
