"""The 2021 DALL·E mini text encoder: DalleBart's encoder initialised from a pretrained BART.

The weights come through transformers (`BartModel.from_pretrained`), so any BART hub name or local
directory works; the reference copied only BART's encoder and shared embedding and trained the image
decoder from scratch, and so do we.
"""

from __future__ import annotations

import re
from typing import Optional

from .config import DalleBartConfig
from .model import DalleBart
from .weights import load_strict

# HF BartEncoder key -> DalleBart TextEncoder key
_RENAMES = [
    (r"^embed_tokens\.", "embed.embed_tokens."),
    (r"^embed_positions\.", "embed.embed_positions."),
    (r"^layernorm_embedding\.", "embed.layernorm_embedding."),
    (r"\.self_attn_layer_norm\.", ".self_attn_norms.post."),
    (r"\.final_layer_norm\.", ".ffn_norms.post."),
    (r"\.fc([12])\.", r".ffn.fc\1."),
]


def bart_encoder_state_dict(bart_encoder_state: dict) -> dict:
    out = {}
    for key, value in bart_encoder_state.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def check_bart_matches(config: DalleBartConfig, bart_config) -> None:
    expected = {
        "d_model": bart_config.d_model, "encoder_layers": bart_config.encoder_layers,
        "encoder_attention_heads": bart_config.encoder_attention_heads,
        "encoder_ffn_dim": bart_config.encoder_ffn_dim, "encoder_vocab_size": bart_config.vocab_size,
        "text_positions": bart_config.max_position_embeddings, "activation_function": bart_config.activation_function,
        "scale_embedding": bart_config.scale_embedding,
        "ln_positions": "postln", "use_bias": True, "use_glu": False, "position_offset": 2,
    }
    wrong = {k: (getattr(config, k), v) for k, v in expected.items() if getattr(config, k) != v}
    if wrong:
        fixes = ", ".join(f"{k}={v!r} (config has {c!r})" for k, (c, v) in wrong.items())
        raise ValueError(f"the pretrained BART does not fit model.net.config; set {fixes}")


def build_dallebart(config: DalleBartConfig, pretrained_bart: Optional[str] = None, **hub_kwargs) -> DalleBart:
    """A DalleBart; with `pretrained_bart` (hub name or path), its encoder starts from that BART's."""
    model = DalleBart(config)
    if pretrained_bart:
        from transformers import BartModel

        bart = BartModel.from_pretrained(pretrained_bart, **hub_kwargs)
        check_bart_matches(config, bart.config)
        state = bart_encoder_state_dict(bart.get_encoder().state_dict())
        load_strict(model.encoder, state, f"BART encoder {pretrained_bart!r}")
    return model
