"""DalleBart: a BART-style text encoder and a causal decoder over VQGAN image codes.

One class covers both generations of the reference: the 2021 DALL·E mini (BART post-LN with biases,
positions offset by 2) and the 2022 NormFormer/GLU DalleBart of dalle-mini and dalle-mega; the difference is
configuration (`conf/model/*.yaml`). Sampling lives in `sampling.py`; this file holds the network, the
fixed-shape decoding step it needs, and `build_dallebart`, the factory the training configs call. Saving
and loading come from `hub.mixin.HubMixin`: ours, the reference's Flax layouts and our Lightning `.ckpt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import DalleBartConfig
from .cuda_graph import GraphSlots
from .hub.bart import read_bart_encoder
from .hub.dallebart_flax import DALLEBART_FLAX, DALLEBART_FLAX_SHARDED
from .hub.lightning import read_lightning_checkpoint
from .hub.mixin import NATIVE, HubMixin
from .hub.model_cards import dallebart_card
from .hub.strict import load_strict
from .layers import DecoderLayer, EncoderLayer, LayerNorm, Linear, run_layers
from .sampling import generate


def _padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 -> (B, 1, 1, T) bool, True where attention is allowed."""
    return attention_mask.bool()[:, None, None, :]


class Embeddings(nn.Module):
    """Token + learned absolute position embeddings, then `layernorm_embedding` (as in BART)."""

    def __init__(self, config: DalleBartConfig, vocab: int, positions: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, config.d_model)
        self.embed_positions = nn.Embedding(positions + config.position_offset, config.d_model)
        self.offset = config.position_offset
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.layernorm_embedding = LayerNorm(config.d_model, config.ln_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(ids) * self.scale + self.embed_positions(positions + self.offset)
        return self.dropout(self.layernorm_embedding(h))


def _final_ln(config: DalleBartConfig, enabled: bool):
    # post-LN layers already end in a LayerNorm; the reference creates no final one for them
    if enabled and config.ln_positions != "postln":
        return LayerNorm(config.d_model, config.ln_eps, scale=config.force_ln_scale)
    return None


class TextEncoder(nn.Module):
    def __init__(self, config: DalleBartConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config, config.encoder_vocab_size, config.text_positions)
        n = config.encoder_layers
        self.layers = nn.ModuleList(EncoderLayer(config, last=i == n - 1) for i in range(n))
        self.final_ln = _final_ln(config, config.use_final_ln_encoder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # positions run over pads too (they are masked out of attention), as in the reference
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed(input_ids, positions)
        h = run_layers(self.layers, h, _padding_mask(attention_mask),
                       checkpointing=self.config.gradient_checkpointing and self.training)
        return self.final_ln(h) if self.final_ln is not None else h


@dataclass
class DecoderCache:
    """State of cached decoding. Rows come in groups of `rows // groups` that share one encoded prompt (the
    images of a prompt), so the cross-attention K/V are stored once per group."""

    self_k: torch.Tensor  # (layers, rows, heads, image_length, head_dim), written at the step index
    self_v: torch.Tensor
    cross_k: tuple[torch.Tensor, ...]  # per layer (groups, heads, text_length, head_dim), projection views
    cross_v: tuple[torch.Tensor, ...]
    cross_mask: torch.Tensor  # (groups, 1, 1, text_length)
    key_positions: torch.Tensor  # (image_length,) arange, compared with the step index for the causal mask


def _refill(cache: DecoderCache, shape: tuple, cross: list, cross_mask: torch.Tensor) -> None:
    # copy_ broadcasts: a mismatch must fail here, not write a prompt into part of another's cache
    new = [t for kv in cross for t in kv] + [cross_mask]
    old = [t for kv in zip(cache.cross_k, cache.cross_v) for t in kv] + [cache.cross_mask]
    if tuple(cache.self_k.shape) != shape or [t.shape for t in new] != [t.shape for t in old]:
        raise ValueError("init_cache(out=...): the cache to refill has other shapes than this prompt batch")
    for dst, src in zip(old, new):
        dst.copy_(src)
    # stale entries are masked out, but a masked inf/NaN (an overflowed run) would still poison softmax @ V
    cache.self_k.zero_()
    cache.self_v.zero_()


class ImageTokenDecoder(nn.Module):
    """Causal decoder over image codes with cross-attention to the text, and the `lm_head`."""

    def __init__(self, config: DalleBartConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config, config.image_rows, config.image_positions)
        n = config.decoder_layers
        self.layers = nn.ModuleList(DecoderLayer(config, last=i == n - 1) for i in range(n))
        self.final_ln = _final_ln(config, config.use_final_ln_decoder)
        self.lm_head = Linear(config.d_model, config.image_rows, bias=False)

    def _final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.final_ln(h) if self.final_ln is not None else h

    def forward(self, decoder_input_ids, encoder_states, attention_mask) -> torch.Tensor:
        positions = torch.arange(decoder_input_ids.shape[1], device=decoder_input_ids.device)
        h = self.embed(decoder_input_ids, positions)
        h = run_layers(self.layers, h, encoder_states, _padding_mask(attention_mask),
                       checkpointing=self.config.gradient_checkpointing and self.training)
        return self.lm_head(self._final_norm(h))

    def init_cache(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor,
                   rows_per_state: int = 1, out: Optional[DecoderCache] = None) -> DecoderCache:
        """A cache for `rows_per_state` rows per encoded prompt: row r attends to state
        r // rows_per_state. `out`, a cache of the same shapes, is refilled in place instead (a captured CUDA
        graph reads the tensors it was captured with)."""
        cfg = self.config
        rows, heads = encoder_states.shape[0] * rows_per_state, cfg.decoder_attention_heads
        shape = (len(self.layers), rows, heads, cfg.image_length, cfg.d_model // heads)
        cross = [layer.cross_attn.project_kv(encoder_states) for layer in self.layers]
        if out is not None:
            _refill(out, shape, cross, _padding_mask(attention_mask))
            return out
        return DecoderCache(
            self_k=encoder_states.new_zeros(shape),
            self_v=encoder_states.new_zeros(shape),
            cross_k=tuple(k for k, _ in cross),
            cross_v=tuple(v for _, v in cross),
            cross_mask=_padding_mask(attention_mask),
            key_positions=torch.arange(cfg.image_length, device=encoder_states.device),
        )

    def step(self, tokens: torch.Tensor, position: torch.Tensor, cache: DecoderCache,
             length: Optional[int] = None) -> torch.Tensor:
        """The normalised last hidden states (rows, d_model) for `tokens` (rows,) at `position` (a 1-element
        long tensor): `lm_head` of them are the logits, an affine map the sampler applies after mixing the
        super-conditioned rows (on half the rows).

        `length` (= position + 1, known on the host) attends over the written part of the cache only; without
        it every step attends over the whole cache under a causal mask, so all steps have one shape (XLA)."""
        h = self.embed(tokens[:, None], position)
        if length is None:
            self_k, self_v = cache.self_k, cache.self_v
            self_mask = (cache.key_positions <= position)[None, None, None, :]
        else:
            self_k, self_v, self_mask = cache.self_k[..., :length, :], cache.self_v[..., :length, :], None
        for i, layer in enumerate(self.layers):
            h = layer.step(h, self_k[i], self_v[i], self_mask, cache.cross_k[i], cache.cross_v[i],
                           cache.cross_mask, position)
        return self._final_norm(h)[:, 0]


    def prefill(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """One teacher-forced pass over `tokens` (rows, n) at positions 0..n-1 that fills the cache's first n
        positions, as n calls of `step` would; returns the normalised hidden states (rows, n, d_model)."""
        h = self.embed(tokens, torch.arange(tokens.shape[1], device=tokens.device))
        for i, layer in enumerate(self.layers):
            h = layer.prefill(h, cache.self_k[i], cache.self_v[i], cache.cross_k[i], cache.cross_v[i],
                              cache.cross_mask)
        return self._final_norm(h)


class DalleBart(HubMixin, nn.Module):
    config_class = DalleBartConfig
    hub_layouts = (NATIVE, DALLEBART_FLAX, DALLEBART_FLAX_SHARDED)
    file_readers = {".ckpt": read_lightning_checkpoint}
    hub_example = "dalle-mini/dalle-mini"
    pickle_fix = "Export them to safetensors with `python -m dalle_mini_pt.export`."
    # the 2021 model as the reference's notebook pins it
    pinned_revisions = {"flax-community/dalle-mini": "4d34126d0df8bc4a692ae933e3b902a1fa8b6114"}

    def __init__(self, config: DalleBartConfig):
        super().__init__()
        self.config = config
        self.encoder = TextEncoder(config)
        self.decoder = ImageTokenDecoder(config)
        self.apply(self._init_weights)
        # the CUDA graph and loop state the graph step modes keep between calls (cuda_graph.py);
        # `model.graph_slots.release()` frees them
        self.graph_slots = GraphSlots()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder input = BOS + codes[:-1] (teacher forcing)."""
        bos = labels.new_full((labels.shape[0], 1), self.config.decoder_start_token_id)
        return torch.cat([bos, labels[:, :-1]], dim=1)

    def forward(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        """Teacher-forced logits (B, image_length, image_rows)."""
        states = self.encoder(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, states, attention_mask)

    def loss(self, input_ids, attention_mask, labels) -> torch.Tensor:
        """Mean cross-entropy over every image code (all targets are real: no padding on the image side)."""
        logits = self(input_ids, attention_mask, self.shift_right(labels))
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    def generate(self, input_ids, attention_mask, generation_config=None, **kwargs):
        """See `dalle_mini_pt.sampling.generate`."""
        return generate(self, input_ids, attention_mask, generation_config, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_extras(self, directory, tokenizer=None) -> None:
        """The tokenizer files, given as an object or a path / hub name, travel with the weights."""
        if tokenizer is None:
            return
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer  # seconds to import: only saving with a tokenizer pays

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        tokenizer.save_pretrained(str(directory))

    def model_card(self, name: str, dtype: str) -> str:
        return dallebart_card(self, name, dtype)


# settings of a training run, not of the architecture: fine-tuning takes them from the model group
TRAINING_SETTINGS = ("dropout", "attention_dropout", "activation_dropout", "gradient_checkpointing")


def architecture_differences(ours: dict, theirs: dict, ignore: tuple = ()) -> dict:
    """{key: (ours, theirs)} for each field `ours` sets that `theirs` gives another value, leaving out the
    training settings, the initialisation scale and `ignore`."""
    skip = (*TRAINING_SETTINGS, "init_std", *ignore)
    return {k: (v, theirs.get(k, v)) for k, v in ours.items()
            if k not in skip and v is not None and theirs.get(k, v) != v}


def build_dallebart(config: DalleBartConfig, pretrained_bart: Optional[str] = None,
                    init_from: Optional[str] = None, **hub_kwargs) -> DalleBart:
    """A DalleBart with random weights; with `init_from` (any directory, repo or `.ckpt` `from_pretrained`
    reads), the weights of that model, whose architecture must be `config`'s; with `pretrained_bart` (a hub
    name or path), the encoder of that BART (the 2021 recipe)."""
    if init_from:
        if pretrained_bart:
            raise ValueError("model.init_from gives every weight already: set model.net.pretrained_bart=null")
        return pretrained_of_architecture(config, init_from, **hub_kwargs)
    model = DalleBart(config)
    if pretrained_bart:
        expected, state = read_bart_encoder(pretrained_bart, **hub_kwargs)
        wrong = {k: (getattr(config, k), v) for k, v in expected.items() if getattr(config, k) != v}
        if wrong:
            fixes = ", ".join(f"{k}={v!r} (config has {c!r})" for k, (c, v) in wrong.items())
            raise ValueError(f"the pretrained BART does not fit model.net.config; set {fixes}")
        load_strict(model.encoder, state, f"BART encoder {pretrained_bart!r}")
    return model


def pretrained_of_architecture(config: DalleBartConfig, init_from: str, **hub_kwargs) -> DalleBart:
    """The model `init_from` holds, after checking that the model group describes the same architecture
    (fields the group leaves unset, and the training settings, which the group gives, are not compared)."""
    model = DalleBart.from_pretrained(init_from, **hub_kwargs,
                                      **{k: getattr(config, k) for k in TRAINING_SETTINGS})
    theirs = model.config.to_dict()
    differ = architecture_differences(config.to_dict(), theirs, ignore=("use_scan",))
    if differ:
        fixes = " ".join(f"model.net.config.{k}={theirs[k]}" for k in differ)
        listed = ", ".join(f"{k}: {mine!r} in the model group, {then!r} in {init_from}"
                           for k, (mine, then) in differ.items())
        raise ValueError(f"model.init_from={init_from} is another architecture than the model group "
                         f"({listed}). Pick the model group it was trained as (model=dalle_mini, "
                         f"model=dalle_mega, …) or set {fixes}")
    return model.train()
