"""Building blocks of DalleBart: LayerNorm, attention, feed-forward, encoder and decoder layers.

LayerNorm placement follows the reference (dalle-mini `modeling.py`) for each `ln_positions`:
  normformer  x + LN_post(f(LN_pre(x)))  and, inside the FFN, LN_in before and LN_mid after the activation
  preln       x + f(LN_pre(x))           with LN_in inside the FFN
  postln      LN(x + f(x))               classic BART (the 2021 model)
LNs that feed a Linear (LN_pre, LN_in, LN_mid) have no scale unless `force_ln_scale`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import DalleBartConfig

ACTIVATION = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "swish": F.silu,
    "silu": F.silu,
}


class LayerNorm(nn.Module):
    """LayerNorm whose scale can be absent (not merely fixed at one), so state dicts carry exactly the
    reference's parameters and strict loading works."""

    def __init__(self, dim: int, eps: float, scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 training, or bf16 weights (their kernel accumulates in float32)
        if x.dtype == self.bias.dtype:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        # mixed precision (CPU autocast hands a bf16 input to float32 parameters): in float32, since the
        # backward of a bf16 input with a float32 bias and no weight fails ("expected scalar type BFloat16")
        return F.layer_norm(x.float(), x.shape[-1:], self.weight, self.bias, self.eps).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear whose inference on a few CPU rows takes the faster of the kernels PyTorch has: float32 on 4
    or more rows goes to oneDNN's inner product (MKL's sgemm behind F.linear is faster only on 1 to 3
    rows); bfloat16 on up to 128 rows streams the weight as the left operand, (W @ x^T)^T. Training,
    autocast and compiled graphs keep F.linear. docs/cpu_decoding.md has the measurements, and the command
    that takes them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, rows = self.weight, x.numel() // max(x.shape[-1], 1)
        if (x.dtype is weight.dtype and x.device.type == "cpu" and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
            if x.dtype is torch.float32 and rows >= 4 and _ONEDNN:
                return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")
            if x.dtype is torch.bfloat16 and 0 < rows <= 128:
                y = torch.mm(weight, x.reshape(rows, -1).t()).t()
                y = y if self.bias is None else y + self.bias
                return y.contiguous().view(*x.shape[:-1], -1)
        return F.linear(x, weight, self.bias)


_ONEDNN = torch.backends.mkldnn.is_available()


def _feeds_linear_norm(config: DalleBartConfig, dim: int) -> LayerNorm:
    return LayerNorm(dim, config.ln_eps, scale=config.force_ln_scale)


class Attention(nn.Module):
    """Multi-head attention; K/V projection is separate from attending so the sampler can cache it."""

    def __init__(self, config: DalleBartConfig, heads: int):
        super().__init__()
        d, bias = config.d_model, config.use_bias
        self.heads = heads
        self.dropout = config.attention_dropout
        self.q_proj = Linear(d, d, bias=bias)
        self.k_proj = Linear(d, d, bias=bias)
        self.v_proj = Linear(d, d, bias=bias)
        self.out_proj = Linear(d, d, bias=bias)
        self.head_scale = nn.Parameter(torch.ones(1, heads, 1, 1)) if config.use_head_scale else None

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        return self._split(self.q_proj(x))

    def forward(self, x, k, v, mask: Optional[torch.Tensor] = None, causal: bool = False) -> torch.Tensor:
        return self.attend(self.project_q(x), k, v, mask, causal)

    def attend(self, q, k, v, mask: Optional[torch.Tensor] = None, causal: bool = False) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        if self.head_scale is not None:
            out = out * self.head_scale
        b, h, t, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * dh))


class FeedForward(nn.Module):
    """GLU (`fc2(LN_mid(act(fc0 x) * fc1 x))`) or the plain two-layer FFN (`fc2(LN_mid(act(fc1 x)))`)."""

    def __init__(self, config: DalleBartConfig, ffn_dim: int):
        super().__init__()
        d, bias = config.d_model, config.use_bias
        self.act = ACTIVATION[config.activation_function]
        self.glu = config.use_glu
        pre = config.ln_positions in ("normformer", "preln")
        self.ln_in = _feeds_linear_norm(config, d) if pre else None
        if self.glu:
            self.fc0 = Linear(d, ffn_dim, bias=bias)
        self.fc1 = Linear(d, ffn_dim, bias=bias)
        self.ln_mid = _feeds_linear_norm(config, ffn_dim) if config.ln_positions == "normformer" else None
        self.fc2 = Linear(ffn_dim, d, bias=bias)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ln_in is not None:
            x = self.ln_in(x)
        if self.glu:  # both projections before the activation: back-to-back weight reads stream faster
            gate, h = self.fc0(x), self.fc1(x)
            h = self.act(gate) * h
        else:
            h = self.act(self.fc1(x))
        if self.ln_mid is not None:
            h = self.ln_mid(h)
        return self.fc2(self.activation_dropout(h) if self.training else h)


class SublayerNorms(nn.Module):
    """The LayerNorms around one sublayer and its residual connection, placed per `ln_positions`.

    The FFN's pre-norm lives inside `FeedForward` (as LN_in), so FFN sublayers ask for no `pre` here; and
    NormFormer puts no LayerNorm after the FFN output, only after attention."""

    def __init__(self, config: DalleBartConfig, attention: bool, post_scale: bool = True):
        super().__init__()
        kind = config.ln_positions
        self.postln = kind == "postln"
        self.pre = _feeds_linear_norm(config, config.d_model) if (
            attention and kind in ("normformer", "preln")) else None
        self.post = None
        if (attention and kind == "normformer") or self.postln:
            self.post = LayerNorm(config.d_model, config.ln_eps, scale=post_scale or config.force_ln_scale)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        h = sublayer(self.pre(x) if self.pre is not None else x)
        if self.post is not None and not self.postln:
            h = self.post(h)
        x = x + (self.dropout(h) if self.training else h)
        return self.post(x) if self.postln else x


def _last_post_scale(config: DalleBartConfig, last: bool) -> bool:
    # The reference's unscanned post-LN stacks drop the scale of the very last LayerNorm; scanned ones
    # cannot (all layers share one shape), so checkpoints differ by layout.
    return not (last and config.use_scan is False)


class EncoderLayer(nn.Module):
    def __init__(self, config: DalleBartConfig, last: bool = False):
        super().__init__()
        self.self_attn = Attention(config, config.encoder_attention_heads)
        self.self_attn_norms = SublayerNorms(config, attention=True)
        self.ffn = FeedForward(config, config.encoder_ffn_dim)
        self.ffn_norms = SublayerNorms(config, attention=False, post_scale=_last_post_scale(config, last))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_norms(x, lambda h: self.self_attn(h, *self.self_attn.project_kv(h), mask=mask))
        return self.ffn_norms(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, config: DalleBartConfig, last: bool = False):
        super().__init__()
        heads = config.decoder_attention_heads
        self.self_attn = Attention(config, heads)
        self.self_attn_norms = SublayerNorms(config, attention=True)
        self.cross_attn = Attention(config, heads)
        self.cross_attn_norms = SublayerNorms(config, attention=True)
        self.ffn = FeedForward(config, config.decoder_ffn_dim)
        self.ffn_norms = SublayerNorms(config, attention=False, post_scale=_last_post_scale(config, last))

    def forward(self, x, encoder_states, cross_mask) -> torch.Tensor:
        x = self.self_attn_norms(x, lambda h: self.self_attn(h, *self.self_attn.project_kv(h), causal=True))
        return self._cross_and_ffn(x, *self.cross_attn.project_kv(encoder_states), cross_mask)

    def step(self, x, self_k, self_v, self_mask, cross_k, cross_v, cross_mask, position) -> torch.Tensor:
        """One cached decoding step for x (rows, 1, d): writes this token's K/V into the cache at `position`
        (a 1-element tensor) and attends over the cache, under `self_mask` if it is given. The cross-attention
        K/V hold one entry per group of rows that share a prompt, so x is viewed as (groups, rows/group, d)
        for it: the rows of a group are that attention's queries."""

        def cached_self_attention(h):
            k, v = self.self_attn.project_kv(h)
            q = self.self_attn.project_q(h)
            self_k.index_copy_(2, position, k)
            self_v.index_copy_(2, position, v)
            return self.self_attn.attend(q, self_k, self_v, mask=self_mask)

        x = self.self_attn_norms(x, cached_self_attention)
        return self._cross_and_ffn(x.view(cross_k.shape[0], -1, x.shape[-1]), cross_k, cross_v,
                                   cross_mask).view(x.shape)

    def prefill(self, x, self_k, self_v, cross_k, cross_v, cross_mask) -> torch.Tensor:
        """The teacher-forced pass over x (rows, n, d) at positions 0..n-1 that also writes their K/V into
        the cache, so cached steps can go on from position n. Cross-attention views x as (groups, rows/group
        * n, d), as `step` does: queries of one group share its prompt's K/V."""

        def self_attention(h):
            k, v = self.self_attn.project_kv(h)
            self_k[:, :, :h.shape[1]].copy_(k)
            self_v[:, :, :h.shape[1]].copy_(v)
            return self.self_attn(h, k, v, causal=True)

        x = self.self_attn_norms(x, self_attention)
        return self._cross_and_ffn(x.reshape(cross_k.shape[0], -1, x.shape[-1]), cross_k, cross_v,
                                   cross_mask).view(x.shape)

    def _cross_and_ffn(self, x, cross_k, cross_v, cross_mask):
        x = self.cross_attn_norms(x, lambda h: self.cross_attn(h, cross_k, cross_v, mask=cross_mask))
        return self.ffn_norms(x, self.ffn)


def run_layers(layers: nn.ModuleList, x: torch.Tensor, *args, checkpointing: bool = False) -> torch.Tensor:
    for layer in layers:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(layer, x, *args, use_reentrant=False)
        else:
            x = layer(x, *args)
    return x
