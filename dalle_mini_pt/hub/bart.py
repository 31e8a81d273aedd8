"""A pretrained HF BART's encoder as DalleBart encoder tensors (the 2021 model starts from one).

The weights come through transformers (`BartModel.from_pretrained`), so any BART hub name or local directory
works; the reference copied only BART's encoder and shared embedding and trained the image decoder from
scratch.
"""

from __future__ import annotations

import re

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


def bart_encoder_config(bart_config) -> dict:
    """The DalleBartConfig values the encoder of a BART with this `BartConfig` needs."""
    return {
        "d_model": bart_config.d_model, "encoder_layers": bart_config.encoder_layers,
        "encoder_attention_heads": bart_config.encoder_attention_heads,
        "encoder_ffn_dim": bart_config.encoder_ffn_dim, "encoder_vocab_size": bart_config.vocab_size,
        "text_positions": bart_config.max_position_embeddings,
        "activation_function": bart_config.activation_function,
        "scale_embedding": bart_config.scale_embedding,
        "ln_positions": "postln", "use_bias": True, "use_glu": False, "position_offset": 2,
    }


def read_bart_encoder(name_or_path: str, **hub_kwargs) -> tuple[dict, dict]:
    """(the config values it needs, the encoder's tensors under our names)."""
    from transformers import BartModel  # transformers' import costs seconds: only the 2021 recipe pays it

    bart = BartModel.from_pretrained(name_or_path, **hub_kwargs)
    return bart_encoder_config(bart.config), bart_encoder_state_dict(bart.get_encoder().state_dict())
