"""The embedded default: DALL·E mini trained from nothing on procedural shape scenes, nothing downloaded.

`scenes` draws the captioned scenes, `judge` checks a picture against its caption, `images` serves them to
the two stages that learn from pixels, `vqgan_module` and `clip_module` train those stages' models,
`evaluate` measures the trained pipeline, and `stages` chains the cached stages that
`python -m dalle_mini_pt.shapes_pipeline` runs.
"""
