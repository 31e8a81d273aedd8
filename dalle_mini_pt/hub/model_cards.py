"""The model cards (README.md) written next to saved components, each with a usage snippet."""

from __future__ import annotations

DALLEBART = """---
library_name: dalle_mini_pt
license: apache-2.0
pipeline_tag: text-to-image
tags:
- dalle-mini
- dallebart
- text-to-image
- pytorch
---

# {name}

A DalleBart text-to-image-codes model ({params:.1f} M parameters, stored as {dtype}) for
[dalle_mini_pt](https://github.com/borisdayma/dalle-mini) (DALL·E mini in PyTorch). The encoder reads a
prompt of up to {text} tokens; the decoder samples {image} VQGAN codes from a {codes}-code codebook.

| d_model | layers (enc/dec) | heads | FFN | LayerNorms | GLU | bias |
|---|---|---|---|---|---|---|
| {d} | {enc}/{dec} | {heads} | {ffn} | {ln} | {glu} | {bias} |

## Usage

```python
from dalle_mini_pt import DalleBart, load_tokenizer

model = DalleBart.from_pretrained("{name}")  # dtype="bfloat16" for a smaller copy in memory
tokenizer = load_tokenizer("{name}")
prompt = tokenizer(["a red bus on a mountain road"])
codes = model.generate(prompt["input_ids"], prompt["attention_mask"], top_k=50, seed=0)
```

Decode `codes` with the matching VQGAN (e.g. `dalle-mini/vqgan_imagenet_f16_16384`) to get the image;
`dalle_mini_pt.DalleMiniPipeline` does all steps, with CLIP reranking.
"""

VQGAN = """---
library_name: dalle_mini_pt
license: mit
tags:
- vqgan
- dalle-mini
- pytorch
---

# {name}

A VQGAN ({params:.1f} M parameters) for [dalle_mini_pt](https://github.com/borisdayma/dalle-mini): it maps
{res}x{res} images to a {grid}x{grid} grid of codes from a {n_embed}-entry codebook and back. Pixels are
{pixel_range}.

```python
from dalle_mini_pt.vqgan import VQGAN

vqgan = VQGAN.from_pretrained("{name}")
images = vqgan.decode(codes, output="uint8")  # codes: (B, {codes}) long -> (B, 3, {res}, {res}) uint8
```
"""

CLIP = """---
library_name: dalle_mini_pt
license: mit
tags:
- clip
- open_clip
- dalle-mini
- pytorch
---

# {name}

An open_clip CLIP ({params:.1f} M parameters, {size}x{size} images, embeddings of {dim}) that
[dalle_mini_pt](https://github.com/borisdayma/dalle-mini) uses to rank generated images by their prompt.

```python
from dalle_mini_pt.clip_scorer import ClipScorer

clip = ClipScorer.from_pretrained("{name}")
order, scores = clip.rank(images, "a red bus")  # images: (B, 3, H, W) float in [0, 1]
```
"""


def _params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def dallebart_card(model, name: str, dtype: str) -> str:
    c = model.config
    return DALLEBART.format(
        name=name, params=_params(model), dtype=dtype, text=c.max_text_length, image=c.image_length,
        codes=c.codebook_size, d=c.d_model, enc=c.encoder_layers, dec=c.decoder_layers,
        heads=c.encoder_attention_heads, ffn=c.encoder_ffn_dim, ln=c.ln_positions, glu=c.use_glu,
        bias=c.use_bias)


def vqgan_card(model, name: str, dtype: str) -> str:
    c = model.config
    pixel_range = "[0, 1]" if c.pixel_range == "zero_to_one" else "[-1, 1] inside (uint8/[0, 1] outside)"
    return VQGAN.format(name=name, params=_params(model), res=c.resolution, grid=c.grid_size,
                        n_embed=c.n_embed, codes=c.codes_per_image, pixel_range=pixel_range)


def clip_card(scorer, name: str, dtype: str) -> str:
    return CLIP.format(name=name, params=_params(scorer), size=scorer.image_size[0],
                       dim=scorer.config.model_cfg["embed_dim"])
