"""CLIP reranking: score generated images against their prompt and sort them, best first.

DALL·E mini samples several images per prompt and keeps the ones CLIP likes best (the reference notebook
uses `openai/clip-vit-base-patch32` and sorts by `logits_per_image`). This wraps an open_clip model so that
the score is exactly that logit: cosine similarity × `logit_scale.exp()` (+ `logit_bias` for SigLIP-style
models).

Three ways to build one:
- `ClipScorer.from_open_clip("ViT-B-32", "openai")`: a named open_clip architecture; the weights for the
  tag are downloaded (that is the caller asking). With `pretrained=None` the weights are random and nothing
  is fetched, for architectures built into open_clip (towers taken from HF transformers or timm may still
  fetch their config or tokenizer files).
- `ClipScorer.from_config({...})`: a small custom architecture with random weights, for tests and demos;
  it uses open_clip's CLIP BPE tokenizer, which ships inside the wheel, so it never touches the network.
- `ClipScorer.from_pretrained(DIR_OR_REPO)`: one saved by `save_pretrained` (`hub.mixin`), e.g. the
  embedded default's trained CLIP, or a named model saved once so that it loads offline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hub.mixin import HubMixin
from .hub.model_cards import clip_card
from .torchvision_fix import patch_torchvision

patch_torchvision()  # open_clip imports torchvision at module level
import open_clip  # noqa: E402
from open_clip.model import CLIP, get_model_preprocess_cfg, set_model_preprocess_cfg  # noqa: E402
from open_clip.transform import PreprocessCfg  # noqa: E402

Images = Union[Tensor, Sequence[Any]]  # float (B, 3, H, W) in [0, 1], or PIL images / (3, H, W) tensors


@dataclass
class ClipConfig:
    """What rebuilds a scorer: open_clip's `CLIP(**model_cfg)`, its image preprocessing (`PreprocessCfg`
    fields: size, mean, std, resize mode, …) and the scoring batch size. Prompts go through open_clip's CLIP
    BPE tokenizer at `model_cfg["text_cfg"]["context_length"]`."""

    model_cfg: dict
    preprocess: dict = field(default_factory=dict)
    batch_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "ClipConfig":
        unknown = sorted(set(values) - {"model_cfg", "preprocess", "batch_size"})
        if unknown or "model_cfg" not in values:
            raise ValueError(f"not a ClipScorer config: needs model_cfg, has unknown keys {unknown}")
        return cls(_plain(values["model_cfg"]), _plain(values.get("preprocess") or {}),
                   values.get("batch_size", 32))


class ClipScorer(HubMixin, nn.Module):
    """An open_clip model plus its tokenizer and image preprocessing, used only for scoring.

    Images go through one torch preprocessing path whatever their type (PIL images are converted to
    [0, 1] tensors first), so a batch scores the same on any device and PIL and tensor inputs agree. The
    resize uses antialiased interpolation, which follows PIL's closely but not bit for bit.
    """

    config_class = ClipConfig
    hub_example = "me/clip-scorer"
    build_on_meta = False  # open_clip registers non-persistent buffers (the causal mask) at init

    def __init__(self, model: nn.Module, tokenizer, batch_size: int = 32, model_cfg: Mapping | None = None):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.preprocess_cfg = PreprocessCfg(**get_model_preprocess_cfg(model))
        self.model_cfg = _plain(model_cfg) if model_cfg is not None else None

    @property
    def config(self) -> ClipConfig:
        """Saving needs the architecture as open_clip's `CLIP(**model_cfg)` and its BPE tokenizer."""
        if self.model_cfg is None or type(self.model) is not CLIP:
            raise ValueError("this scorer cannot be saved: its model is not an open_clip CLIP with a known "
                             "model_cfg (build it with from_config or from_open_clip)")
        if not isinstance(self.tokenizer, open_clip.SimpleTokenizer):
            raise ValueError("this scorer cannot be saved: its tokenizer is a "
                             f"{type(self.tokenizer).__name__}, not open_clip's CLIP BPE tokenizer; reload "
                             "it by name with from_open_clip")
        return ClipConfig(self.model_cfg, asdict(self.preprocess_cfg), self.batch_size)

    @classmethod
    def from_config_object(cls, config: ClipConfig) -> "ClipScorer":
        scorer = cls.from_config(config.model_cfg, batch_size=config.batch_size)
        if config.preprocess:  # JSON made its tuples lists
            preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in config.preprocess.items()}
            set_model_preprocess_cfg(scorer.model, preprocess)
            scorer.preprocess_cfg = PreprocessCfg(**preprocess)
        return scorer

    def model_card(self, name: str, dtype: str) -> str:
        return clip_card(self, name, dtype)

    @staticmethod
    def open_clip_models() -> list[str]:
        return open_clip.list_models()

    @classmethod
    def from_open_clip(
        cls,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
        batch_size: int = 32,
    ) -> "ClipScorer":
        """Build a named open_clip architecture; `pretrained` is a tag, a local checkpoint file, or None."""
        _check_name_and_tag(model_name, pretrained)
        model, _, _ = open_clip.create_model_and_transforms(
            model_name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
            # random towers must stay random: the default would fetch HF text weights when pretrained=None
            pretrained_text=False,
            pretrained_image=False,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        return cls(model, tokenizer, batch_size, open_clip.get_model_config(model_name))

    @classmethod
    def from_config(cls, model_cfg: Mapping, seed: int = 0, batch_size: int = 32) -> "ClipScorer":
        """Build an open_clip `CLIP(**model_cfg)` with random weights drawn from `seed`.

        `model_cfg` holds `embed_dim`, `vision_cfg` and `text_cfg` as in open_clip's model JSON files. The
        text tower must accept the CLIP BPE ids, so `text_cfg.vocab_size` must be at least 49408.
        """
        cfg = _plain(model_cfg)
        text_cfg = cfg.get("text_cfg", {})
        tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
        vocab_size = text_cfg.get("vocab_size", 49408)
        if vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"text_cfg.vocab_size={vocab_size} is smaller than the CLIP BPE vocabulary "
                f"({tokenizer.vocab_size})"
            )
        with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
            torch.manual_seed(seed)
            model = CLIP(**cfg)
        preprocess = PreprocessCfg(size=model.visual.image_size)
        set_model_preprocess_cfg(model, asdict(preprocess))
        return cls(model, tokenizer, batch_size, cfg)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.preprocess_cfg.size)

    @torch.inference_mode()
    def preprocess(self, images: Images) -> Tensor:
        """Resize, crop and normalise as the model expects: (B, 3, H, W) on the model's device."""
        return self.prepare(images)

    def prepare(self, images: Images) -> Tensor:
        """`preprocess` without inference mode, for training (its output can enter autograd)."""
        pixels = [images] if isinstance(images, Tensor) else [_image_to_tensor(im) for im in images]
        resized = [self._resize(p.to(self.device, torch.float32)) for p in pixels]
        x = torch.cat(resized).clamp_(0, 1)  # bicubic overshoots; PIL's uint8 output cannot
        mean = torch.tensor(self.preprocess_cfg.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess_cfg.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def encode_images(self, images: Images) -> Tensor:
        """Unit-norm image embeddings (B, D), computed `batch_size` images at a time."""
        pixels = self.preprocess(images).to(self.model.logit_scale.dtype)
        chunks = [self.model.encode_image(c, normalize=True) for c in pixels.split(self.batch_size)]
        return torch.cat(chunks).float()

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings (P, D); prompts longer than the context are truncated."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()

    @torch.inference_mode()
    def similarity_matrix(self, images: Images, prompts: Sequence[str]) -> Tensor:
        """CLIP's `logits_per_image`: (n_images, n_prompts)."""
        return self._logits(self.encode_images(images) @ self.encode_text(prompts).T)

    @torch.inference_mode()
    def score(self, images: Images, prompts: str | Sequence[str]) -> Tensor:
        """One logit per image, (B,): image i against `prompts[i]`, or against one prompt if a str is given.

        Equal to the diagonal of `similarity_matrix(images, prompts)` without computing the rest of it.
        """
        image_emb = self.encode_images(images)
        if isinstance(prompts, str):
            prompts = [prompts]
        elif len(prompts) != len(image_emb):
            raise ValueError(f"{len(image_emb)} images but {len(prompts)} prompts: give one prompt per image "
                             "or a str")
        return self._logits((image_emb * self.encode_text(prompts)).sum(-1))

    @torch.inference_mode()
    def rank(self, images: Images, prompt: str, top_n: int | None = None) -> tuple[Tensor, Tensor]:
        """Indices of the best `top_n` images for `prompt` (all if None) and their scores, best first."""
        scores = self.score(images, prompt)
        order = torch.sort(scores, descending=True, stable=True).indices[:top_n]
        return order, scores[order]

    def _logits(self, cosine: Tensor) -> Tensor:
        logits = self.model.logit_scale.exp().float() * cosine
        bias = getattr(self.model, "logit_bias", None)
        return logits if bias is None else logits + bias.float()

    def _resize(self, x: Tensor) -> Tensor:
        """Resize (..., 3, H, W) to the model's size following open_clip's `resize_mode`."""
        x = x if x.dim() == 4 else x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"images must be float (B, 3, H, W) in [0, 1], got {tuple(x.shape)} {x.dtype}")
        cfg, (th, tw) = self.preprocess_cfg, self.image_size
        h, w = x.shape[-2:]
        if cfg.resize_mode == "squash":
            return _interpolate(x, (th, tw), cfg.interpolation)
        # 'shortest' covers the target then crops; 'longest' fits inside it then pads
        scale = max(th / h, tw / w) if cfg.resize_mode == "shortest" else min(th / h, tw / w)
        x = _interpolate(x, (max(1, round(h * scale)), max(1, round(w * scale))), cfg.interpolation)
        return _center_crop_or_pad(x, (th, tw), fill=cfg.fill_color / 255)


def _check_name_and_tag(model_name: str, pretrained: str | None) -> None:
    """Fail before any download, naming what exists (open_clip's own errors only log the tag list)."""
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return  # open_clip resolves these itself and ignores `pretrained`
    known = open_clip.list_models()
    if model_name.replace("/", "-") not in known:
        raise ValueError(f"unknown open_clip model {model_name!r}; available: {', '.join(known)}")
    if pretrained is None or os.path.isfile(pretrained):
        return
    if not open_clip.get_pretrained_cfg(model_name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for {model_name!r} (and no such file); "
            f"available tags: {', '.join(tags) or 'none'}"
        )


def _plain(cfg: Mapping) -> dict:
    """DictConfig (from Hydra) to nested dicts: open_clip tests `isinstance(cfg, dict)`."""
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _image_to_tensor(image) -> Tensor:
    if isinstance(image, Tensor):
        return image
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def _interpolate(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=mode, antialias=mode in ("bilinear", "bicubic"),
                         align_corners=False)


def _center_crop_or_pad(x: Tensor, size: tuple[int, int], fill: float) -> Tensor:
    th, tw = size
    h, w = x.shape[-2:]
    if h < th or w < tw:  # pad symmetrically (extra pixel on the bottom/right), as torchvision does
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]
