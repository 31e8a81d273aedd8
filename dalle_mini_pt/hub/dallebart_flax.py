"""The reference's saved DalleBarts (`config.json` + `flax_model.msgpack`) as our config and tensors.

Two parameter layouts map onto our module names:

* DalleBart (dalle-mini 0.1.5: `dalle-mini/dalle-mini`, `dalle-mini/dalle-mega`), whose layers carry Flax
  auto-names (`LayerNorm_k`, `FlaxBartAttention_k`, `GLU_0/Dense_k`) and are either scanned
  (`FlaxBartEncoderLayers`, leading layer axis) or unscanned (`FlaxBartEncoderLayer_{i}`);
* the 2021 HF-FlaxBart layout of `flax-community/dalle-mini` (`self_attn_layer_norm`, `fc1`, `shared`, …).

Dense kernels are [in, out] and become Linear weights [out, in]; Flax LayerNorm `scale` is our `weight`.
The config comes back as a dict of `DalleBartConfig` values; the class checks it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .files import CONFIG_NAME, FLAX_WEIGHTS_NAME, load_config_json
from .flax_msgpack import PARAM, read_flax_msgpack
from .mixin import Layout

FLAX_WEIGHTS_INDEX_NAME = FLAX_WEIGHTS_NAME + ".index.json"

# the 2021 model was trained on prompts padded to 128 tokens (its config.json does not record it)
TEXT_LENGTH_2021 = 128
# both generations learned codes of vqgan-jax ports fed [0, 1] images (their config.json records no range)
RELEASED_PIXEL_RANGE = "zero_to_one"

# --- DalleBart (2022) layout --------------------------------------------------------------------------

def _layer_norm_slots(ln_positions: str, decoder: bool) -> list[str]:
    """Our names for a layer's LayerNorm_0, LayerNorm_1, … in the order the reference creates them."""
    slots = []
    for sub in ["self_attn_norms"] + (["cross_attn_norms"] if decoder else []):
        if ln_positions in ("normformer", "preln"):
            slots.append(f"{sub}.pre")
        if ln_positions in ("normformer", "postln"):
            slots.append(f"{sub}.post")
    if ln_positions == "postln":
        slots.append("ffn_norms.post")
    return slots


_FFN_DENSE = {"GLU_0": ("fc0", "fc1", "fc2"), "FFN_0": ("fc1", "fc2")}


def _layer_key(sub: str, slots: list[str]) -> str:
    """`FlaxBartAttention_1/q_proj/kernel` → `cross_attn.q_proj.weight` (within one layer)."""
    parts = sub.split("/")
    if parts[0].startswith("FlaxBartAttention_") and len(parts) in (2, 3):
        attn = ("self_attn", "cross_attn")[int(parts[0].rsplit("_", 1)[1])]
        return f"{attn}.head_scale" if parts[1] == "head_scale" else f"{attn}.{parts[1]}.{PARAM[parts[2]]}"
    if parts[0].startswith("LayerNorm_") and len(parts) == 2:
        return f"{slots[int(parts[0][10:])]}.{PARAM[parts[1]]}"
    if parts[0] in _FFN_DENSE and len(parts) == 3:
        index = int(parts[1].rsplit("_", 1)[1])
        if parts[1].startswith("Dense_"):
            return f"ffn.{_FFN_DENSE[parts[0]][index]}.{PARAM[parts[2]]}"
        if parts[1].startswith("LayerNorm_"):
            return f"ffn.{('ln_in', 'ln_mid')[index]}.{PARAM[parts[2]]}"
    raise KeyError(sub)


def _torch_value(flax_key: str, value: torch.Tensor, ours: str) -> torch.Tensor:
    if flax_key.endswith("/kernel"):
        return value.transpose(-1, -2).contiguous()
    if ours.endswith("head_scale"):  # reference (1, 1, H, 1) over (B, T, H, D); ours (1, H, 1, 1)
        return value.reshape(1, -1, 1, 1)
    return value


_LAYER = re.compile(r"^model/(encoder|decoder)/layers/FlaxBart(?:Encoder|Decoder)Layer(s|_(\d+))/(.+)$")
_TOP = {"lm_head/kernel": "decoder.lm_head.weight"}


def _top_key(key: str) -> str:
    if key in _TOP:
        return _TOP[key]
    m = re.match(r"^model/(encoder|decoder)/"
                 r"(embed_tokens|embed_positions|layernorm_embedding|final_ln)/(\w+)$", key)
    if not m:
        raise KeyError(key)
    part, module, param = m.groups()
    prefix = f"{part}.final_ln" if module == "final_ln" else f"{part}.embed.{module}"
    return f"{prefix}.{PARAM[param]}"


def dallebart_state_dict(flat: dict[str, torch.Tensor], ln_positions: str, source: str) -> dict:
    """Our state dict from a flat DalleBart tree; scanned stacks are split along their layer axis."""
    out = {}
    for key, value in flat.items():
        try:
            m = _LAYER.match(key)
            if m is None:
                out[_top_key(key)] = _torch_value(key, value, _top_key(key))
                continue
            part, scanned, index, sub = m.groups()
            sub_key = _layer_key(sub, _layer_norm_slots(ln_positions, part == "decoder"))
            layers = enumerate(value.unbind(0)) if scanned == "s" else [(int(index), value)]
            for i, v in layers:
                out[f"{part}.layers.{i}.{sub_key}"] = _torch_value(key, v, sub_key)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"{source}: parameter {key!r} (shape {tuple(value.shape)}) has no place in a "
                             f"DalleBart with ln_positions={ln_positions!r}; the weights use a "
                             f"variant dalle_mini_pt does not implement ({err!r})") from err
    return out


def is_scanned(flat: dict) -> bool:
    return any("/FlaxBartEncoderLayers/" in k or "/FlaxBartDecoderLayers/" in k for k in flat)


def dallebart_config(values: dict, flat: dict) -> dict:
    """Our config values from a reference `config.json`; the layer layout is read from the tensors, not
    trusted."""
    values = dict(values)
    if values.get("ln_positions") == "deepnet":
        values["ln_positions"] = "postln"
    if values.get("ln_positions") == "postln":
        # the reference requires these True yet never builds a final LN for post-LN; ours says it plainly
        values["use_final_ln_encoder"] = values["use_final_ln_decoder"] = False
    values["use_scan"] = is_scanned(flat)
    values["gradient_checkpointing"] = False  # a training-time choice of the run that saved it
    values.setdefault("vqgan_pixel_range", RELEASED_PIXEL_RANGE)
    return values


# --- the 2021 model (HF FlaxBart names) -----------------------------------------------------------------

_RENAMES_2021 = [
    (r"^model/shared/embedding$", "encoder.embed.embed_tokens.weight"),
    (r"^model/decoder_embed/embedding$", "decoder.embed.embed_tokens.weight"),
    (r"^model/(encoder|decoder)/embed_positions/embedding$", r"\1.embed.embed_positions.weight"),
    (r"^model/(encoder|decoder)/layernorm_embedding/", r"\1.embed.layernorm_embedding."),
    (r"^model/(encoder|decoder)/layers/(\d+)/", r"\1.layers.\2."),
    (r"\.self_attn_layer_norm/", ".self_attn_norms.post."),
    (r"\.encoder_attn_layer_norm/", ".cross_attn_norms.post."),
    (r"\.encoder_attn/", ".cross_attn/"),
    (r"\.final_layer_norm/", ".ffn_norms.post."),
    (r"\.(fc[12])/", r".ffn.\1."),
    (r"^lm_head/kernel$", "decoder.lm_head.weight"),
    (r"/", "."),
    (r"\.kernel$", ".weight"),
    (r"\.scale$", ".weight"),
]


def is_2021_layout(flat: dict) -> bool:
    return "model/shared/embedding" in flat or "final_logits_bias" in flat


def bart2021_state_dict(flat: dict[str, torch.Tensor], source: str) -> dict:
    """Our state dict from the 2021 tree. Its `final_logits_bias` is a buffer HF Flax BART keeps under
    stop_gradient, so it stayed at zero; our model has no such bias and we check that nothing is lost."""
    out = {}
    for key, value in flat.items():
        if key == "final_logits_bias":
            if value.float().abs().max() != 0:
                raise ValueError(f"{source}: final_logits_bias is not all zeros; DalleBart has no logits "
                                 "bias, so these weights would compute something else")
            continue
        ours = key
        for pattern, repl in _RENAMES_2021:
            ours = re.sub(pattern, repl, ours)
        out[ours] = value.transpose(-1, -2).contiguous() if key.endswith("/kernel") else value
    return out


def bart2021_config(values: dict, flat: dict) -> dict:
    """The 2021 config.json is a BART config of the text side; the image side is read off the tensors."""
    image_rows = flat["model/decoder_embed/embedding"].shape[0]
    offset = 2  # HF BART's learned positions skip two rows
    image_positions = flat["model/decoder/embed_positions/embedding"].shape[0] - offset
    text_positions = values["max_position_embeddings"]
    return dict(
        encoder_vocab_size=values["vocab_size"], image_vocab_size=image_rows - 1,
        image_length=image_positions - 1, max_text_length=min(TEXT_LENGTH_2021, text_positions),
        text_positions=text_positions,
        image_positions=image_positions, position_offset=offset, d_model=values["d_model"],
        encoder_layers=values["encoder_layers"], decoder_layers=values["decoder_layers"],
        encoder_attention_heads=values["encoder_attention_heads"],
        decoder_attention_heads=values["decoder_attention_heads"], encoder_ffn_dim=values["encoder_ffn_dim"],
        decoder_ffn_dim=values["decoder_ffn_dim"],
        activation_function=values.get("activation_function", "gelu"),
        scale_embedding=values.get("scale_embedding", False), ln_positions="postln", use_glu=False,
        use_bias=True, use_final_ln_encoder=False, use_final_ln_decoder=False, use_scan=True,
        vqgan_pixel_range=RELEASED_PIXEL_RANGE,
    )


def from_flat(values: dict, flat: dict, source: str) -> tuple[dict, dict]:
    """(config values, state dict) from a parsed reference `config.json` and its flat parameter tree."""
    if is_2021_layout(flat):
        return bart2021_config(values, flat), bart2021_state_dict(flat, source)
    values = dallebart_config(values, flat)
    return values, dallebart_state_dict(flat, values.get("ln_positions", "normformer"), source)


def read_dallebart_flax(config_path: Path, msgpack_path: Path) -> tuple[dict, dict]:
    return from_flat(load_config_json(config_path), read_flax_msgpack(msgpack_path), str(msgpack_path))


def shard_names(index_path: Path) -> list[str]:
    """The shard files of sharded Flax weights, as transformers' `flax_model.msgpack.index.json` maps
    each parameter path to one."""
    try:
        return sorted(set(load_config_json(index_path)["weight_map"].values()))
    except (KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"{index_path}: not an index of sharded weights (no weight_map of files)") from err


def read_sharded_flax(config_path: Path, index_path: Path) -> tuple[dict, dict]:
    """Each shard holds part of the parameter tree (transformers' `flax_shard_checkpoint`): read them all."""
    flat = {}
    for name in shard_names(index_path):
        flat.update(read_flax_msgpack(index_path.parent / name))
    return from_flat(load_config_json(config_path), flat, str(index_path))


DALLEBART_FLAX = Layout(f"{CONFIG_NAME} + {FLAX_WEIGHTS_NAME} (the reference's)", CONFIG_NAME,
                        FLAX_WEIGHTS_NAME, read_dallebart_flax)
DALLEBART_FLAX_SHARDED = Layout(f"{CONFIG_NAME} + {FLAX_WEIGHTS_INDEX_NAME} and its shards", CONFIG_NAME,
                                FLAX_WEIGHTS_INDEX_NAME, read_sharded_flax, companions=shard_names)
