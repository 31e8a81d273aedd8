"""When a batch stops waiting for more requests to merge with it.

Clients that each send their next request when the last one is answered come back together: the members
of the batch that just ended, plus those that waited while it ran. A window counted from the first waiting
request's arrival cannot see that: the requests that waited through a batch are already past it when the
batch ends, so they run at once without the clients just answered, and the clients split into groups that
take turns, each batch a fraction of what could be merged. So the window opens when the device is free (or
when the first request arrives, if later) and closes after `wait` seconds, a full batch, or, once several
clients showed up together, as soon as as many images wait as that demand (the batch just run and the
ones that waited through it). A lone client waits the whole window, as before any batch: it cannot tell
whether others are about to send together with it.
"""

from __future__ import annotations

import math


class BatchWindow:
    def __init__(self, wait: float, batch_images: int):
        self.wait, self.batch_images = wait, batch_images
        self.expected = batch_images  # images the next batch waits for
        self.idle_since = -math.inf  # when the device last became free

    def batch_ended(self, jobs: int, images: int, now: float) -> None:
        """`jobs` and `images`: those of the batch just run and of the requests that waited through it."""
        self.expected = min(self.batch_images, images) if jobs >= 2 else self.batch_images
        self.idle_since = now

    def left(self, first_arrived: float, images: int, now: float) -> float:
        """Seconds the batch still waits, given its first request's arrival and the images it holds now;
        0 or less: start it."""
        if images >= self.expected:
            return 0.0
        return max(first_arrived, self.idle_since) + self.wait - now
