"""Text to images: normalise → tokenise → sample codes → VQGAN decode → CLIP rank.

Data flows one way through separately loaded components (DalleBart + tokenizer, VQGAN, CLIP scorer), as a
diffusers-style pipeline composes them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from .image_grid import caption_grid, to_pil
from .model import DalleBart
from .tokenizer import TextTokenizer


@dataclass
class PromptImages:
    """The images of one prompt, best CLIP score first when a scorer ranked them."""

    prompt: str
    images: list[Image.Image]
    codes: torch.Tensor  # (n, image_length)
    scores: Optional[list[float]] = None

    def grid(self, scale: int = 1) -> Image.Image:
        labels = [[f"{s:.2f}" for s in self.scores]] if self.scores is not None else None
        return caption_grid([self.images], [self.prompt], labels, scale=scale)


def load_vqgan(spec: str):
    """A `.safetensors` file (saved by `VQGAN.save_safetensors`), a taming `.ckpt` (the f16/16384 config),
    a Hydra yaml such as `conf/vqgan/tiny.yaml`, or else a directory or hub repo for `VQGAN.from_pretrained`
    (ours, vqgan-jax's Flax one such as `dalle-mini/vqgan_imagenet_f16_16384`, or taming's model.yaml +
    last.ckpt)."""
    from .vqgan import VQGAN, VQGANConfig

    path = Path(spec)
    if path.suffix == ".safetensors":
        return VQGAN.from_safetensors(path)
    if path.suffix == ".ckpt":
        return VQGAN.from_taming_checkpoint(path, VQGANConfig())
    if path.suffix in (".yaml", ".yml"):
        return instantiate(OmegaConf.load(path))
    # hub repo names may contain dots, so every other spec goes here; it names what it could not find
    return VQGAN.from_pretrained(spec)


def load_clip(spec: Optional[str], device=None):
    """`none`, `NAME:TAG` (open_clip; the tag's weights are downloaded), a Hydra yaml, or a directory written
    by `ClipScorer.save` (e.g. the embedded default's trained CLIP)."""
    if spec is None or str(spec).lower() == "none":
        return None
    spec = str(spec)
    if spec.endswith((".yaml", ".yml")):
        return instantiate(OmegaConf.load(spec)).to(device or "cpu")
    from .clip_scorer import ClipScorer

    if Path(spec).is_dir():
        return ClipScorer.load(spec).to(device or "cpu")

    name, _, tag = spec.partition(":")
    return ClipScorer.from_pretrained(name, tag or None, device=device or "cpu")


class DalleMiniPipeline:
    def __init__(self, model: DalleBart, tokenizer: TextTokenizer, vqgan, clip=None, normalizer=None,
                 decode_batch_size: int = 8):
        cfg = model.config
        if vqgan.config.n_embed != cfg.codebook_size or vqgan.config.codes_per_image != cfg.image_length:
            raise ValueError(f"the VQGAN ({vqgan.config.n_embed} codes, {vqgan.config.codes_per_image} per image) "
                             f"does not match the model ({cfg.codebook_size} codes, {cfg.image_length} per image); "
                             "load the VQGAN the model was trained with")
        if tokenizer.max_length > cfg.text_positions:
            raise ValueError(f"tokenizer max_length {tokenizer.max_length} exceeds the model's "
                             f"{cfg.text_positions} text positions")
        self.model, self.tokenizer, self.vqgan = model.eval(), tokenizer, vqgan.eval()
        self.clip, self.normalizer = clip, normalizer
        self.decode_batch_size = decode_batch_size

    @classmethod
    def from_pretrained(cls, model: str, vqgan: str, clip: Optional[str] = None, tokenizer: Optional[str] = None,
                        device=None, dtype=torch.float32, **hub_kwargs) -> "DalleMiniPipeline":
        """Components by name or path: the model from a hub repo or directory (ours or the reference's), or a
        Lightning `.ckpt` (with `tokenizer`); the VQGAN and CLIP as in `load_vqgan` / `load_clip`."""
        from .export import model_from_lightning
        from .hub import load_tokenizer

        device = torch.device(device or "cpu")
        if str(model).endswith(".ckpt"):
            if tokenizer is None:
                raise ValueError("a Lightning checkpoint holds no tokenizer: pass tokenizer= (e.g. data.tokenizer)")
            net = model_from_lightning(model, dtype=dtype).to(device)
        else:
            net = DalleBart.from_pretrained(model, dtype=dtype, device=device, **hub_kwargs)
        length = net.config.max_text_length
        tok = (TextTokenizer.from_pretrained(tokenizer, length) if tokenizer
               else load_tokenizer(model, max_length=length, **hub_kwargs))
        normalizer = None
        if net.config.normalize_text:
            from .text_normalizer import TextNormalizer

            normalizer = TextNormalizer()
        return cls(net, tok, load_vqgan(vqgan).to(device), load_clip(clip, device), normalizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _prepare(self, prompts: Union[str, Sequence[str]]) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given: pass a string or a list of strings")
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
        if any(not p.strip() for p in prompts):
            warnings.warn("an empty prompt is the unconditional prompt: its images follow no text", stacklevel=3)
        return prompts

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.normalizer(p) if self.normalizer and p.strip() else p for p in prompts]
        batch = {**self.tokenizer(texts), **self.tokenizer.unconditional()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (rows, image_length) -> float images in [0, 1], in batches (the VQGAN runs in float32)."""
        chunks = [self.vqgan.decode(c.to(self.vqgan.device)) for c in codes.split(self.decode_batch_size)]
        return torch.cat(chunks)

    @torch.inference_mode()
    def __call__(self, prompts: Union[str, Sequence[str]], num_images: int = 4, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, temperature: float = 1.0, condition_scale: float = 10.0,
                 seed: Optional[int] = None, clip_top_n: Optional[int] = None,
                 progress: Optional[bool] = None) -> list[PromptImages]:
        """Images for each prompt. `condition_scale` 10 is the reference notebook's default; `clip_top_n`
        keeps the best n by CLIP score (all, ranked, when None). `progress` None shows a bar on terminals."""
        prompts = self._prepare(prompts)
        if num_images < 1:
            raise ValueError(f"num_images={num_images} must be >= 1")
        if clip_top_n is not None and not 1 <= clip_top_n <= num_images:
            raise ValueError(f"clip_top_n={clip_top_n} must be between 1 and num_images={num_images}")
        batch = self.tokenize(prompts)
        codes = self.model.generate(**batch, num_images=num_images, top_k=top_k, top_p=top_p,
                                    temperature=temperature, condition_scale=condition_scale, seed=seed,
                                    progress=progress)
        pictures = self.decode(codes)
        results = []
        for i, prompt in enumerate(prompts):
            rows = slice(i * num_images, (i + 1) * num_images)
            results.append(self._rank(prompt, pictures[rows], codes[rows], clip_top_n))
        return results

    def _rank(self, prompt, pictures, codes, top_n) -> PromptImages:
        if self.clip is None:
            return PromptImages(prompt, to_pil(pictures), codes.cpu())
        order, scores = self.clip.rank(pictures.to(self.clip.device), prompt, top_n=top_n)
        return PromptImages(prompt, to_pil(pictures[order.to(pictures.device)]),
                            codes[order.to(codes.device)].cpu(), scores.cpu().tolist())
