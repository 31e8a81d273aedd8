"""Saved components on disk and on the Hugging Face hub.

`files` finds a directory or hub repo and reads it file by file (with the cache of converted copies and
uploads, and the single `.safetensors` file that keeps its config in its metadata); `mixin` gives every
trained component one `from_pretrained` / `save_pretrained` / `push_to_hub` and holds our own layout; the
other modules are layout readers, each turning one format into a config dict and tensors without importing
any model class: `dallebart_flax` (the reference's 2021 and 2022 Flax layouts), `vqgan_flax` (vqgan-jax),
`taming` (model.yaml + last.ckpt, or the `.ckpt` alone), `lightning` (our Lightning checkpoint files) and
`bart` (a pretrained BART encoder, for the 2021 model). `flax_msgpack` reads the Flax files both Flax
readers start from. Words: a "checkpoint" is only ever a `.ckpt` file Lightning wrote (our training's or
taming's); what a reader returns is a `StoredComponent`; a model directory or hub repo is a "saved"
component.
"""
