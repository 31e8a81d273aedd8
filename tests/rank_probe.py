"""Test-only callback for tests/test_ddp.py: each rank writes the sample ids it trained on and its final
weights to `out_dir/rank{r}.pt`. Added through Hydra: `+callbacks.probe._target_=rank_probe.RankProbe`."""

from pathlib import Path

import pytorch_lightning as pl
import torch


def sample_ids(labels: torch.Tensor) -> list[int]:
    """The id tests/test_ddp.py writes into each row's first two codes (base 32)."""
    return (labels[:, 0] * 32 + labels[:, 1]).tolist()


class RankProbe(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir, self.seen = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.extend(sample_ids(batch["labels"]))

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "seen": self.seen,
                    "state": state, "global_step": trainer.global_step},
                   self.out_dir / f"rank{trainer.global_rank}.pt")
