"""Training glue: the DalleBart LightningModule, optimizer groups and schedules, Adafactor, the callback that
logs generated samples and the guard that stops a diverging run. The entry point that composes them from
Hydra configs is `train.py`."""
