"""StreamSpec: everything that decides which batches a stream yields, in which order and of which shape.

The streaming DataModule builds one from its config keys and hands it down: `ShardStream` reads its columns,
shapes and caption options, `stream_plan` its split and shuffle. A frozen value, so a worker's copy and a
checkpoint's record of it cannot drift from the one the DataModule built.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StreamSpec:
    image_length: int  # codes per row
    codebook_size: int  # codes are 0..codebook_size - 1
    batch_size: int  # per device
    num_workers: int = 0  # DataLoader workers; 0 reads in the training process (planned as one worker)
    seed: int = 0
    shuffle: bool = True  # row groups per epoch, then rows through the shuffle buffer
    shuffle_buffer: int = 5000  # rows each worker holds for shuffling
    drop_last: bool = True  # no short batch: fixed shapes
    blank_caption_prob: float = 0.0  # caption -> "" with this probability
    caption_column: str = "caption"
    encoding_column: str = "encoding"
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if not 0.0 <= self.blank_caption_prob <= 1.0:
            raise ValueError(f"data.blank_caption_prob={self.blank_caption_prob} must be within [0, 1]")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size={self.batch_size} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")

    @property
    def workers(self) -> int:
        """How many parts a rank's rows are cut into: one per DataLoader worker, one when there are none."""
        return max(1, self.num_workers)

    @property
    def columns(self) -> tuple[str, str]:
        return self.caption_column, self.encoding_column

    def placed(self, rank: int, world_size: int) -> StreamSpec:
        return replace(self, rank=rank, world_size=world_size)

    def for_validation(self) -> StreamSpec:
        """One fixed set, read in order, with every caption."""
        return replace(self, shuffle=False, blank_caption_prob=0.0)

    def resume_layout(self) -> dict:
        """What a mid-epoch resume needs unchanged: with another value the saved batch count names other
        rows."""
        return {"world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "seed": self.seed}
