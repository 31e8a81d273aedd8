"""Tensors to PIL images, and captioned grids of them (used by the pipeline's users, the CLI and the
generation callback)."""

from __future__ import annotations

import textwrap
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) float in [0, 1] or uint8 -> PIL RGB images."""
    if images.is_floating_point():
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def caption_grid(rows: Sequence[Sequence[Image.Image]], captions: Sequence[str],
                 labels: Optional[Sequence[Sequence[str]]] = None, scale: int = 1) -> Image.Image:
    """One row per caption: the caption as a strip of text above its images, each image optionally with
    a label (e.g. its CLIP score) under it. Small images are enlarged `scale` times (nearest) to be seen."""
    font = ImageFont.load_default()
    w, h = rows[0][0].width * scale, rows[0][0].height * scale
    cols = max(len(r) for r in rows)
    wrap = max(8, cols * w // 7)
    caption_lines = [textwrap.wrap(c or "(empty prompt: unconditional)", wrap)[:3] for c in captions]
    label_h = 14 if labels else 0
    row_heights = [14 * len(lines) + 6 + h + label_h for lines in caption_lines]
    grid = Image.new("RGB", (cols * w, sum(row_heights)), "white")
    draw, y = ImageDraw.Draw(grid), 0
    for r, images in enumerate(rows):
        draw.multiline_text((3, y + 3), "\n".join(caption_lines[r]), fill="black", font=font)
        y += 14 * len(caption_lines[r]) + 6
        for c, image in enumerate(images):
            grid.paste(image.resize((w, h), Image.NEAREST), (c * w, y))
            if labels:
                draw.text((c * w + 3, y + h + 1), labels[r][c], fill="black", font=font)
        y += h + label_h
    return grid
