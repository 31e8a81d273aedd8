"""The model card (README.md) written next to saved DalleBart weights, with a usage snippet."""

from __future__ import annotations

CARD = """---
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
from dalle_mini_pt import DalleBart
from dalle_mini_pt.hub import load_tokenizer

model = DalleBart.from_pretrained("{name}")  # dtype="bfloat16" for a smaller copy in memory
tokenizer = load_tokenizer("{name}")
prompt = tokenizer(["a red bus on a mountain road"])
codes = model.generate(prompt["input_ids"], prompt["attention_mask"], top_k=50, seed=0)
```

Decode `codes` with the matching VQGAN (e.g. `dalle-mini/vqgan_imagenet_f16_16384`) to get the image;
`dalle_mini_pt.pipeline.DalleMiniPipeline` does all steps, with CLIP reranking.
"""


def model_card(model, name: str, dtype: str) -> str:
    c = model.config
    return CARD.format(
        name=name, params=model.num_parameters() / 1e6, dtype=dtype, text=c.max_text_length, image=c.image_length,
        codes=c.codebook_size, d=c.d_model, enc=c.encoder_layers, dec=c.decoder_layers,
        heads=c.encoder_attention_heads, ffn=c.encoder_ffn_dim, ln=c.ln_positions, glu=c.use_glu, bias=c.use_bias,
    )
