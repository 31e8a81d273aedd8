"""Saved components on disk and on the Hugging Face hub.

`files` finds a directory or hub repo and reads it file by file (with the cache of converted checkpoints and
uploads); `mixin` gives every trained component one `from_pretrained` / `save_pretrained` / `push_to_hub`;
the other modules are layout readers, each turning one format into a config dict and tensors without
importing any model class: `native` (ours), `dallebart_flax` (the reference's 2021 and 2022 Flax layouts),
`vqgan_flax` (vqgan-jax), `taming`, `lightning` (our training checkpoints) and `bart` (a pretrained BART
encoder, for the 2021 model). `flax_msgpack` reads the Flax files both Flax readers start from.
"""
