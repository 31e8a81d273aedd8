"""The training row of `python benchmarks/bench.py` on the reference (run with .venv-ref/bin/python).

    .venv-ref/bin/python benchmarks/reference_train_step.py '{"config": {...}, "batch": 4, "steps": 3, ...}'

dalle-mini 0.1.5's Flax `DalleBart` built from the spec's config with random weights, the loss of its training
script (cross-entropy over the 256 codes, decoder input = BOS + codes[:-1]), `optax.adafactor` with the
learning rate alone (the 2021 recipe; conf/optimizer/adafactor.yaml is its PyTorch twin), all in one jitted
step with params and optimizer state donated. Timed as ours: `warmup` steps (they compile), then the mean of
`steps`. Prints one JSON line: seconds per step, peak RSS, parameter count.
"""

import functools
import json
import sys
import time
from pathlib import Path

import jax

jax.experimental.PartitionSpec = jax.sharding.PartitionSpec  # dalle-mini 0.1.5 predates jax.sharding
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from dalle_mini.model import DalleBart, DalleBartConfig  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_params(model, seed: int = 0):
    """N(0, init_std) kernels and embeddings, unit scales, zero biases; shapes from eval_shape (no
    compile)."""
    shapes = jax.eval_shape(functools.partial(model.init_weights, input_shape=(1, 1)), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    params = {}
    for path, leaf in flatten_dict(shapes).items():
        if path[-1] in ("scale", "head_scale"):
            params[path] = np.ones(leaf.shape, np.float32)
        elif path[-1] == "bias":
            params[path] = np.zeros(leaf.shape, np.float32)
        else:
            params[path] = (model.config.init_std * rng.standard_normal(leaf.shape)).astype(np.float32)
    return jax.tree_util.tree_map(jnp.asarray, unflatten_dict(params))


def training_batch(config, batch: int, codebook: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.encoder_vocab_size, (batch, config.max_text_length)).astype("i4")
    labels = rng.integers(0, codebook, (batch, config.image_length)).astype("i4")
    bos = np.full((batch, 1), config.decoder_start_token_id, "i4")
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids),
            "decoder_input_ids": jnp.asarray(np.concatenate([bos, labels[:, :-1]], 1)),
            "labels": jnp.asarray(labels)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    config = DalleBartConfig(**spec["config"])
    model = DalleBart(config, dtype=jnp.float32, _do_init=False)
    params = random_params(model)
    optimizer = optax.adafactor(learning_rate=spec["lr"])
    opt_state = optimizer.init(params)
    batch = training_batch(config, spec["batch"], spec["codebook_size"])

    def loss_fn(params, batch):
        logits = model(batch["input_ids"], batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"],
                       params=params, train=False).logits  # dropout is 0: train=True would compute the same
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(spec["warmup"]):
        params, opt_state, loss = step(params, opt_state, batch)
    jax.block_until_ready((params, loss))
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        params, opt_state, loss = step(params, opt_state, batch)
    jax.block_until_ready((params, loss))
    seconds = (time.perf_counter() - start) / spec["steps"]
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(json.dumps({"seconds_per_step": seconds, "peak_rss_mb": peak_rss_mb(), "params": int(n_params),
                      "loss": float(loss)}))


if __name__ == "__main__":
    main()
