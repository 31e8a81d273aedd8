"""VQGAN: images <-> grids of codebook indices, built from taming-transformers' own blocks.

Submodules carry taming `VQModel`'s names (`encoder, decoder, quant_conv, post_quant_conv, quantize`), so
a taming checkpoint loads with strict key checking. `taming.models.vqgan` is not imported: it pulls
Lightning 1.x APIs that no longer exist. Encoding and decoding always run in float32: the decoder
overflows to NaN in fp16. `from_pretrained` reads every format (`hub/`): ours, vqgan-jax's Flax layout and
taming's model.yaml + last.ckpt as directories or hub repos, and the single files `.safetensors`
(`save_safetensors`) and taming `.ckpt`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from .config import PIXEL_RANGES
from .hub.files import read_single_safetensors, write_single_safetensors
from .hub.mixin import NATIVE, HubMixin
from .hub.model_cards import vqgan_card
from .hub.taming import PICKLE_FIX, TAMING_LAYOUTS, read_taming_file
from .hub.vqgan_flax import VQGAN_FLAX

# Keys of taming's model.yaml `params` that only matter for training or for taming's own loader.
_TAMING_TRAINING_KEYS = ("lossconfig", "monitor", "ckpt_path", "ignore_keys", "image_key", "sane_index_shape")


@dataclass
class VQGANConfig:
    """taming's `ddconfig` fields plus the codebook size; defaults are vqgan_imagenet_f16_16384."""

    n_embed: int = 16384
    embed_dim: int = 256
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (16,)
    resolution: int = 256
    z_channels: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    pixel_range: str = "minus_one_to_one"

    def __post_init__(self) -> None:
        # Tuples whatever came in (Hydra ListConfig, JSON lists), so configs compare equal after a round trip.
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32]
        if bad:
            raise ValueError(f"VQGANConfig: channel widths {bad} (ch * ch_mult) are not multiples of 32, "
                             "which taming's GroupNorm(32, C) needs. Fix: pick ch and ch_mult so they are.")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"VQGANConfig: resolution {self.resolution} is not divisible by the "
                             f"downsampling factor {2 ** (len(self.ch_mult) - 1)}. Fix: change either.")
        if self.pixel_range not in PIXEL_RANGES:
            raise ValueError(f"VQGANConfig: pixel_range {self.pixel_range!r} is not in {PIXEL_RANGES}.")

    @property
    def grid_size(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @property
    def codes_per_image(self) -> int:
        return self.grid_size**2

    def ddconfig(self) -> dict:
        skip = ("n_embed", "embed_dim", "pixel_range")
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {**values, "double_z": False}  # taming's Encoder defaults to True (a KL-autoencoder setting)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "VQGANConfig":
        """Accept our flat dict or taming's model.yaml `params` (network shape nested under `ddconfig`)."""
        values = dict(values)
        values.update(dict(values.pop("ddconfig", None) or {}))
        for key in _TAMING_TRAINING_KEYS:
            values.pop(key, None)
        if values.pop("double_z", False):
            raise ValueError("double_z=True describes a KL autoencoder, not a VQGAN; it will not load.")
        for key in ("remap", "colorize_nlabels"):
            if values.pop(key, None) is not None:
                raise ValueError(f"taming option {key} is not supported by dalle_mini_pt's VQGAN.")
        unknown = sorted(values.keys() - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VQGAN config keys {unknown}")
        return cls(**values)


class VQGAN(HubMixin, nn.Module):
    """taming's VQModel without its training half: `encode` images to codes, `decode` codes to images.
    Both are inference helpers (no autograd graph); the image model trains on stored codes."""

    config_class = VQGANConfig
    hub_layouts = (NATIVE, VQGAN_FLAX, *TAMING_LAYOUTS)
    # a bare file records no config when it is a taming .ckpt or a .safetensors converted by hand: those are
    # read with from_pretrained's default_config (default VQGANConfig(), vqgan_imagenet_f16_16384's network)
    file_readers = {".safetensors": read_single_safetensors, ".ckpt": read_taming_file}
    hub_example = "dalle-mini/vqgan_imagenet_f16_16384"
    pickle_fix = PICKLE_FIX
    save_dtype = torch.float32  # it only runs in float32
    # the commit the reference's inference pins (its notebooks and app), so a moved main cannot change codes
    pinned_revisions = {"dalle-mini/vqgan_imagenet_f16_16384": "e93a26e7707683d349bf5d5c41c5b0ef69b677a9",
                        "flax-community/vqgan_f16_16384": "90cc46addd2dd8f5be21586a9a23e1b95aa506a9"}

    def __init__(self, config: VQGANConfig | Mapping):
        super().__init__()
        self.config = config if isinstance(config, VQGANConfig) else VQGANConfig.from_dict(config)
        c = self.config
        self.encoder = Encoder(**c.ddconfig())
        with contextlib.redirect_stdout(io.StringIO()):  # taming prints the latent shape on every build
            self.decoder = Decoder(**c.ddconfig())
        # legacy=True is what taming's VQModel builds; it only changes the training loss, not the codes.
        self.quantize = VectorQuantizer2(c.n_embed, c.embed_dim, beta=0.25, legacy=True,
                                         sane_index_shape=True)
        self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)

    @property
    def device(self) -> torch.device:
        return self.quantize.embedding.weight.device

    def _float32(self):
        """Refuse low-precision weights rather than upcast a copy per call, and switch autocast off so an
        enclosing bf16/fp16 autocast region cannot lower the precision either."""
        low = sorted({str(p.dtype) for p in self.parameters() if p.dtype != torch.float32})
        if low:
            raise TypeError(f"VQGAN weights are {', '.join(low)}; its decoder overflows (NaN) in half "
                            "precision, so it only runs in float32. Fix: call .float() on the VQGAN (keep it "
                            "out of any .half()/.to(bfloat16) of the surrounding model).")
        return torch.autocast(self.device.type, enabled=False)

    def _prepare_images(self, images) -> torch.Tensor:
        """Batch of images -> float32 NCHW in the pixel range of the weights, on the model's device."""
        x, c, r = torch.as_tensor(images), self.config.in_channels, self.config.resolution
        if x.dim() != 4 or (x.shape[1] != c and x.shape[-1] != c):
            raise ValueError(f"expected a batch of images shaped (B, {c}, H, W) or (B, H, W, {c}); got "
                             f"{tuple(x.shape)}. A single image needs a batch axis: images[None].")
        if x.shape[1] != c:
            x = x.permute(0, 3, 1, 2)
        if tuple(x.shape[2:]) != (r, r):
            # No silent resize: how an image is fitted (crop vs pad, filter) changes its codes, so the data
            # pipeline must choose it once for both training and inference.
            g = self.config.grid_size
            raise ValueError(f"images are {x.shape[2]}x{x.shape[3]} but this VQGAN encodes {r}x{r} images "
                             f"into a {g}x{g} code grid. Fix: resize the shorter side to {r} and "
                             f"centre-crop to {r}x{r} (as dalle-mini's encoding did).")
        if x.dtype == torch.uint8:
            x = x.float() / 255
        elif x.is_floating_point():
            x = x.float()
            lo, hi = x.aminmax()
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"float images must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}]. Pass "
                                 "uint8 for 0..255 pixels; clamp(0, 1) after a resize that overshoots.")
        else:
            raise TypeError(f"images must be uint8 (0..255) or float in [0, 1]; got {x.dtype}")
        return self.to_model_range(x.to(self.device))

    def to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the range the weights were trained on."""
        return images * 2 - 1 if self.config.pixel_range == "minus_one_to_one" else images

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output -> [0, 1] pixels, clipped."""
        return ((x + 1) / 2 if self.config.pixel_range == "minus_one_to_one" else x).clamp(0, 1)

    def _check_codes(self, codes) -> torch.Tensor:
        codes, n = torch.as_tensor(codes), self.config.codes_per_image
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor; got {codes.dtype}")
        if codes.dim() != 2 or codes.shape[1] != n:
            g = self.config.grid_size
            raise ValueError(f"codes must be shaped (B, {n}) (a {g}x{g} grid, row-major); "
                             f"got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.n_embed):
            raise ValueError(f"codes must lie in 0..{self.config.n_embed - 1} (the codebook); got values "
                             f"in {codes.min().item()}..{codes.max().item()}")
        return codes.to(self.device, torch.long)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images (B,C,H,W) or (B,H,W,C), uint8 or float [0, 1] -> codes (B, grid*grid) long, row-major."""
        x = self._prepare_images(images)
        with self._float32():
            _, _, (_, _, indices) = self.quantize(self.quant_conv(self.encoder(x)))
        return indices.reshape(x.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes, output: str = "float") -> torch.Tensor:
        """Codes (B, grid*grid) -> images (B,C,H,W): float32 in [0, 1], or uint8 with output="uint8"."""
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8'; got {output!r}")
        codes = self._check_codes(codes)
        g = self.config.grid_size
        with self._float32():
            shape = (codes.shape[0], g, g, self.config.embed_dim)
            z = self.quantize.get_codebook_entry(codes.reshape(-1), shape=shape)
            x = self.decoder(self.post_quant_conv(z))
        x = self.to_unit_range(x)
        return (x * 255).round().to(torch.uint8) if output == "uint8" else x

    def model_card(self, name: str, dtype: str) -> str:
        return vqgan_card(self, name, dtype)

    def save_safetensors(self, path) -> None:
        """One .safetensors file with the config in its metadata: `from_pretrained(path)` reads it back."""
        write_single_safetensors(path, self.config.to_dict(), self.state_dict())
