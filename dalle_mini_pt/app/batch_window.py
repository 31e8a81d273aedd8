"""When a batch stops waiting for more requests to merge with it.

Clients that each send their next request when the last one is answered come back together: the members
of the batch that just ended, plus those that waited while it ran. A window counted from the first waiting
request's arrival cannot see that: the requests that waited through a batch are already past it when the
batch ends, so they run at once without the clients just answered, and the clients split into groups that
take turns, each batch a fraction of what could be merged. So the window opens when the device is free (or
when the first request arrives, if later) and closes after `wait` seconds, or as soon as as many images
wait as that demand (the batch just run and the ones that waited through it), or a full batch. One client
at a time never waits: it alone was the demand. Before any batch it waits the whole window.
"""

from __future__ import annotations

import math


class BatchWindow:
    def __init__(self, wait: float, batch_images: int):
        self.wait, self.batch_images = wait, batch_images
        self.expected = batch_images  # images the next batch waits for
        self.idle_since = -math.inf  # when the device last became free

    def batch_ended(self, images_run: int, images_waiting: int, now: float) -> None:
        self.expected = max(1, min(self.batch_images, images_run + images_waiting))
        self.idle_since = now

    def left(self, first_arrived: float, images: int, now: float) -> float:
        """Seconds the batch still waits, given its first request's arrival and the images it holds now;
        0 or less: start it."""
        if images >= self.expected:
            return 0.0
        return max(first_arrived, self.idle_since) + self.wait - now
