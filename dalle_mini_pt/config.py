"""Architecture configuration of DalleBart, both generations.

Field names follow the reference `DalleBartConfig` (dalle-mini 0.1.5) so released `config.json` files map
onto it key for key. The 2021 model (HF BART, post-LN with biases, positions offset by 2) is the same class
with other values: see `conf/model/dalle_mini_2021.yaml`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

LN_POSITIONS = ("normformer", "preln", "postln")
# Pixel range the weights were trained on: taming's releases use [-1, 1]; dalle-mini's JAX port of the
# ImageNet model is fed ToTensor() images and its output clipped to [0, 1] directly (min-dalle does the same).
PIXEL_RANGES = ("minus_one_to_one", "zero_to_one")  # VQGANConfig.pixel_range
ACTIVATIONS = ("gelu", "gelu_new", "relu", "swish", "silu")


@dataclass
class DalleBartConfig:
    encoder_vocab_size: int = 50264
    image_vocab_size: int = 16384  # embedding / lm_head rows are image_vocab_size + 1 (the +1 is BOS)
    image_length: int = 256  # codes per image
    max_text_length: int = 64  # prompts are padded / truncated to this many tokens
    # Rows of the learned position tables. None means "as long as the sequence"; the 2021 model keeps
    # BART's 1024 text positions while its data uses 128 tokens.
    text_positions: Optional[int] = None
    image_positions: Optional[int] = None
    position_offset: int = 0  # BART's learned positions skip 2 rows; DalleBart's do not
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 2730
    decoder_ffn_dim: int = 2730
    activation_function: str = "gelu"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    use_bias: bool = False
    ln_positions: str = "normformer"
    ln_eps: float = 1e-5
    force_ln_scale: bool = False
    use_head_scale: bool = False
    use_glu: bool = True
    use_final_ln_encoder: bool = True
    use_final_ln_decoder: bool = True
    decoder_start_token_id: Optional[int] = None  # None -> image_vocab_size (the BOS row)
    # Ids the sampler may draw: the VQGAN codebook. None -> min(image_vocab_size, BOS). Mega pads its
    # vocabulary to 16415 rows for sharding but its VQGAN has 16384 codes.
    codebook_size: Optional[int] = None
    gradient_checkpointing: bool = False
    # prompts go through the reference's TextNormalizer before tokenisation (the released models: true)
    normalize_text: bool = False
    # The pixel range of the VQGAN whose codes the model learned ("zero_to_one" for the released models, whose
    # VQGAN ports are fed [0, 1] images); None = not recorded. Where it is set, shards encoded and a VQGAN
    # decoding with another range are refused instead of silently giving other pictures.
    vqgan_pixel_range: Optional[str] = None
    # Layout of a reference checkpoint's layer stacks. It matters for one quirk only: unscanned post-LN
    # stacks have no scale on the last layer's final LayerNorm. None means scanned (the reference default).
    use_scan: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.text_positions is None:
            self.text_positions = self.max_text_length
        if self.image_positions is None:
            self.image_positions = self.image_length
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.image_vocab_size
        if self.codebook_size is None:
            self.codebook_size = min(self.image_vocab_size, self.decoder_start_token_id)
        self.validate()

    def validate(self) -> None:
        def fail(key: str, problem: str, fix: str) -> None:
            raise ValueError(f"DalleBartConfig.{key}: {problem}. Fix: {fix}.")

        if self.ln_positions not in LN_POSITIONS:
            fail("ln_positions", f"{self.ln_positions!r} is not supported", f"use one of {LN_POSITIONS}")
        if self.vqgan_pixel_range not in (None, *PIXEL_RANGES):
            fail("vqgan_pixel_range", f"{self.vqgan_pixel_range!r} is unknown",
                 f"use one of {PIXEL_RANGES} or null")
        if self.activation_function not in ACTIVATIONS:
            fail("activation_function", f"{self.activation_function!r} is unknown",
                 f"use one of {ACTIVATIONS}")
        if self.max_text_length > self.text_positions:
            fail("max_text_length",
                 f"{self.max_text_length} exceeds the {self.text_positions} text positions",
                 "lower max_text_length or raise text_positions")
        if self.image_length > self.image_positions:
            fail("image_length", f"{self.image_length} exceeds the {self.image_positions} image positions",
                 "lower image_length or raise image_positions")
        for key in ("encoder", "decoder"):
            d, h = self.d_model, getattr(self, f"{key}_attention_heads")
            if d % h:
                fail(f"{key}_attention_heads", f"d_model {d} is not divisible by {h} heads",
                     "pick a head count that divides d_model")
        if not 0 <= self.decoder_start_token_id <= self.image_vocab_size:
            fail("decoder_start_token_id", f"{self.decoder_start_token_id} is not a row of the "
                 f"{self.image_vocab_size + 1}-row image embedding", "use image_vocab_size (the BOS row)")
        if not 0 < self.codebook_size <= self.image_vocab_size:
            fail("codebook_size", f"{self.codebook_size} is outside 1..{self.image_vocab_size}",
                 "set it to the VQGAN's number of codes")
        if self.ln_positions == "postln" and (self.use_final_ln_encoder or self.use_final_ln_decoder):
            fail("use_final_ln_encoder", "post-LN layers already end in a LayerNorm (the reference asserts "
                 "this too)", "set use_final_ln_encoder and use_final_ln_decoder to false")

    @property
    def image_rows(self) -> int:
        return self.image_vocab_size + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DalleBartConfig":
        """Build from a dict that may hold extra keys (e.g. a reference `config.json`); unknown keys
        that change the computation are refused rather than silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unsupported = {
            "ln_type": "layernorm", "use_cosine_attention": False, "use_swin_position_embeddings": False,
            "use_deepnet_scaling": False, "use_subln_init": False, "use_alibi": False, "sinkhorn_iters": 1,
            "use_absolute_position_embeddings": True, "tie_word_embeddings": False,
        }
        for key, ok in unsupported.items():
            if key in values and values[key] not in (ok, None):
                raise ValueError(f"config option {key}={values[key]!r} is not supported by dalle_mini_pt "
                                 f"(only {ok!r}); this checkpoint uses a variant we do not implement.")
        return cls(**{k: v for k, v in values.items() if k in known})
