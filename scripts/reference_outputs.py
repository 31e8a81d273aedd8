"""Reference numbers for tests/test_parity.py, computed by dalle-mini 0.1.5 itself (JAX/Flax, CPU).

Runs in the reference environment (scripts/reference_env.sh), never in ours:
    .venv-ref/bin/python scripts/reference_outputs.py --out DIR

For each option set, scanned and unscanned, it builds a tiny random DalleBart with the reference, perturbs
every LayerNorm scale/bias and head scale (so that a wrong mapping of any of them shows), saves it with the
reference's `save_pretrained` (config.json + flax_model.msgpack) and records, in DIR/<case>/outputs.npz:
encoder states, teacher-forced logits, and a super-conditioned sampling run through the reference `generate`:
its per-step logits (after super-conditioning, before the logits processors), its tokens, and the Gumbel noise
`jax.random.categorical` drew at each step (categorical is argmax(logits + gumbel(key)); we regenerate that
noise from the same key chain as `_sample`, and check here that it reproduces the reference's tokens).
Token parity needs one setting: our sampler never draws BOS (= image_vocab_size; the only id it excludes here,
since codebook_size = image_vocab_size), while the reference's `generate` can, because it passes
min_length=None to transformers 4.25's `_get_logits_processor`, which then skips the min-length processor that
the config's `min_length` implies. We pass min_length=image_length+1 to the reference explicitly: that bans
BOS (its eos id) at every step, as intended, and leaves the recorded logits (taken before the processors)
untouched.
DIR/manifest.json lists the cases and the sampling settings.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

# XLA compile time dominates these tiny runs; cheaper backend passes halve it (still float32 arithmetic)
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true")
import jax  # noqa: E402

jax.experimental.PartitionSpec = jax.sharding.PartitionSpec  # dalle-mini 0.1.5 predates jax.sharding
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from dalle_mini.model import (  # noqa: E402
    DalleBart,
    DalleBartConfig,
    modeling,  # noqa: E402
)
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402

BASE = dict(encoder_vocab_size=64, image_vocab_size=40, image_length=16, max_text_length=16, d_model=32,
            encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=48, decoder_ffn_dim=48, dropout=0.0, gradient_checkpointing=False, init_std=0.2)
OPTION_SETS = {
    "normformer_glu": dict(),  # the released dalle-mini / dalle-mega architecture
    "normformer_headscale_lnscale": dict(use_head_scale=True, force_ln_scale=True),
    "preln_ffn_bias": dict(ln_positions="preln", use_glu=False, use_bias=True),
    "postln_ffn_bias": dict(ln_positions="postln", use_glu=False, use_bias=True),
}
SAMPLING = dict(top_k=20, top_p=0.9, temperature=1.5, condition_scale=3.0)
ROWS = 2


def _patch_postln_decoder() -> None:
    """dalle-mini 0.1.5's FlaxBartDecoder.setup forgets `self.final_ln = None` for post-LN (the encoder has
    it), so a post-LN DalleBart cannot even be initialised. Add the missing branch, nothing else."""
    setup = modeling.FlaxBartDecoder.setup

    def patched(self):
        setup(self)
        if not (self.config.use_final_ln_decoder and self.config.ln_positions != "postln"):
            self.final_ln = None

    modeling.FlaxBartDecoder.setup = patched


def random_params(model, seed: int):
    """Random weights in the reference's own parameter tree (its shapes via eval_shape: compiling the init
    costs seconds). LayerNorm scales/biases and head scales are moved off 1/0, where a wrong mapping would
    go unnoticed."""
    shapes = jax.eval_shape(functools.partial(model.init_weights, input_shape=(1, 1)), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    params = {}
    for path, leaf in sorted(flatten_dict(shapes).items()):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path[-1] in ("scale", "head_scale"):
            params[path] = 1.0 + 0.3 * noise
        elif path[-1] == "bias":
            params[path] = 0.2 * noise
        else:  # Dense kernels and embeddings
            params[path] = model.config.init_std * noise
    return jax.tree_util.tree_map(jnp.asarray, unflatten_dict(params))


def inputs(rng: np.random.Generator, config):
    ids = rng.integers(3, config.encoder_vocab_size, (ROWS, config.max_text_length)).astype("i4")
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = 1, 0  # the second prompt is padded
    uncond = np.full((ROWS, config.max_text_length), 1, "i4")
    uncond[:, :2] = [0, 2]  # tokenised "" : <s> </s> <pad>…
    uncond_mask = (uncond != 1).astype("i4")
    codes = rng.integers(0, config.image_vocab_size, (ROWS, config.image_length)).astype("i4")
    decoder_ids = np.concatenate([np.full((ROWS, 1), config.image_vocab_size, "i4"), codes[:, :-1]], 1)
    return dict(input_ids=ids, attention_mask=mask, uncond_input_ids=uncond,
                uncond_attention_mask=uncond_mask, decoder_input_ids=decoder_ids)


def _recording(make, store):
    """Wrap a processor factory so the traced loop reports what each step's processor saw (or returned)."""

    def factory(*args, **kwargs):
        inner = make(*args, **kwargs)

        def call(ids, logits, cur_len):
            out = inner(ids, logits, cur_len)
            seen, value = store
            jax.debug.callback(lambda x: seen.append(np.asarray(x)), logits if value == "in" else out,
                               ordered=True)
            return out

        return call

    return factory


def sample(model, params, data, key):
    """The reference generate (traced, as users run it); the processors report their inputs and outputs."""
    seen, warped = [], []
    model._get_logits_processor = _recording(model._get_logits_processor, (seen, "in"))
    model._get_logits_warper = _recording(model._get_logits_warper, (warped, "out"))
    s = SAMPLING
    out = model.generate(jnp.asarray(data["input_ids"]), jnp.asarray(data["attention_mask"]), prng_key=key,
                         top_k=s["top_k"], top_p=s["top_p"], temperature=s["temperature"],
                         condition_scale=s["condition_scale"],
                         input_ids_uncond=jnp.asarray(data["uncond_input_ids"]),
                         attention_mask_uncond=jnp.asarray(data["uncond_attention_mask"]),
                         min_length=model.config.image_length + 1, params=params)
    tokens = np.asarray(out.sequences)[:, 1:]
    noise = []
    for step in range(tokens.shape[1]):  # the key chain of `_sample`: split, draw with the first half
        step_key, key = jax.random.split(key)
        noise.append(np.asarray(jax.random.gumbel(step_key, warped[step].shape, jnp.float32)))
    noise = np.stack(noise)
    replay = np.argmax(np.stack(warped) + noise, -1).T
    assert (replay == tokens).all(), f"the Gumbel noise does not replay:\n{replay}\n{tokens}"
    return np.stack(seen, 1), tokens, noise


def run_case(out_dir: Path, name: str, options: dict, scan: bool, seed: int) -> None:
    config = DalleBartConfig(**BASE, **options, use_scan=scan)
    model = DalleBart(config, dtype=jnp.float32, _do_init=False)
    params = random_params(model, seed)
    case = out_dir / f"{name}_{'scanned' if scan else 'unscanned'}"
    model.save_pretrained(case, params=params)
    data = inputs(np.random.default_rng(seed), config)
    ids, mask = jnp.asarray(data["input_ids"]), jnp.asarray(data["attention_mask"])
    encoder = model.encode(ids, mask, params=params)
    logits = model(ids, mask, decoder_input_ids=jnp.asarray(data["decoder_input_ids"]), params=params).logits
    sample_logits, tokens, noise = sample(model, params, data, jax.random.PRNGKey(seed + 7))
    np.savez(case / "outputs.npz", **data, encoder_states=np.asarray(encoder.last_hidden_state),
             logits=np.asarray(logits), sample_logits=sample_logits, tokens=tokens, noise=noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None, help="option sets to run (default: all)")
    args = parser.parse_args()
    _patch_postln_decoder()
    cases = []
    for seed, (name, options) in enumerate(OPTION_SETS.items()):
        if args.only and name not in args.only:
            continue
        for scan in (True, False):
            run_case(args.out, name, options, scan, seed)
            cases.append(f"{name}_{'scanned' if scan else 'unscanned'}")
    (args.out / "manifest.json").write_text(json.dumps({"cases": cases, "sampling": SAMPLING}, indent=2))
    print(f"wrote {len(cases)} reference cases to {args.out}")


if __name__ == "__main__":
    main()
