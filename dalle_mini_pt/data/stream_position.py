"""StreamPosition: where the training stream stands, kept in one place.

The DataModule owns one, saves it in checkpoints and restores it; its loader moves it (`begin`, `advance`,
`finish`); the stream reads it when a pass starts (a DataLoader worker reads its copy, taken as the pass
began). Nothing else keeps a count of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamPosition:
    epoch: int = 0  # the epoch in progress (or the next to start)
    batches: int = 0  # batches of that epoch handed out so far

    def begin(self, epoch: int) -> None:
        """A pass over `epoch` starts: from the batches already handed out if it is the epoch in progress,
        else from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0

    def advance(self) -> None:
        self.batches += 1

    def finish(self) -> None:
        self.epoch, self.batches = self.epoch + 1, 0

    def restore(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = int(epoch), int(batches)
