"""One XLA training run in a process of its own, for tests/test_xla_precision.py: `bf16-true` sets
XLA_USE_BF16, which torch-xla reads once per process, so each precision gets a fresh interpreter.

    python tests/xla_precision_run.py OUT.pt OVERRIDE... [-- OVERRIDE...]...

composes conf/train.yaml with each group of overrides in turn, trains on the XLA device, and saves, per run,
the loss of every step and every weight as it was on the device before the first step and after the last."""

import sys

import pytorch_lightning as pl
import torch
import torch_xla._internal.tpu as xla_tpu
from hydra import compose, initialize_config_dir

from dalle_mini_pt.train import CONFIG_DIR, build

# Lightning counts TPU chips on the PCI bus; torch-xla's CPU platform has one device
xla_tpu.num_available_devices = lambda: 1


class Record(pl.Callback):
    def __init__(self):
        self.losses, self.start, self.end = [], None, None

    def weights(self, module) -> dict:
        return {k: p.detach().cpu().clone() for k, p in module.net.named_parameters()}

    def on_train_start(self, trainer, module):
        self.start = self.weights(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())  # read after the run: no host sync inside it

    def on_train_end(self, trainer, module):
        self.end = self.weights(module)


def run(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    pl.seed_everything(cfg.seed, workers=True)  # as the entry point does: the same start in every run
    datamodule, module, trainer = build(cfg)
    record = Record()
    trainer.callbacks.append(record)
    trainer.fit(module, datamodule=datamodule)
    return {"precision": str(trainer.precision), "losses": [float(x) for x in record.losses],
            "start": record.start, "end": record.end}


def groups(args: list[str]) -> list[list[str]]:
    out = [[]]
    for arg in args:
        out.append([]) if arg == "--" else out[-1].append(arg)
    return out


if __name__ == "__main__":
    torch.save([run(overrides) for overrides in groups(sys.argv[2:])], sys.argv[1])
