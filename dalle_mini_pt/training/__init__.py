"""Training glue: the DalleBart LightningModule, optimizer groups and schedules, Adafactor, and the callback
that logs generated samples. The entry point that composes them from Hydra configs is `train.py`."""
