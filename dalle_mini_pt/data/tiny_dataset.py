"""A small, learnable caption -> code-grid dataset and its BPE tokenizer, made locally (no downloads).

Each sample is a 16×16 grid of codes: a background code, and a shape (square, circle, cross, stripe) on the
left or right, drawn with a code per colour. Its caption names colour, shape and side in varied phrasing,
so a model must read the text to predict the codes. It stands in for VQGAN-encoded images wherever the
project needs data without downloads: the tests, the debug experiment and the README's first command.

    python -m dalle_mini_pt.data.tiny_dataset --out data/tiny
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle", "cross", "stripe")
SIDES = ("left", "right")
TEMPLATES = ("a {colour} {shape} on the {side}", "{shape}, {colour}, {side} side",
             "the {side} has a {colour} {shape}", "a {shape} in {colour} at the {side}")
GRID = 16
CODEBOOK_SIZE = 32  # background 0, colours 1..4, shape edges 5..; leaves room for a tiny VQGAN-sized vocab


def shape_mask(shape: str) -> np.ndarray:
    y, x = np.mgrid[0:8, 0:8]
    masks = {
        "square": (x >= 1) & (x <= 6) & (y >= 1) & (y <= 6),
        "circle": (x - 3.5) ** 2 + (y - 3.5) ** 2 <= 9,
        "cross": (abs(x - 3.5) < 1) | (abs(y - 3.5) < 1),
        "stripe": (y >= 3) & (y <= 4),
    }
    return masks[shape]


def render_codes(colour: str, shape: str, side: str) -> np.ndarray:
    grid = np.zeros((GRID, GRID), dtype=np.int64)
    x0 = 0 if side == "left" else GRID // 2
    patch = grid[4:12, x0:x0 + 8]
    patch[shape_mask(shape)] = 1 + COLOURS.index(colour)
    return grid.reshape(-1)


def make_samples(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    combos = list(itertools.product(COLOURS, SHAPES, SIDES))
    captions, codes = [], []
    for i in range(n):
        colour, shape, side = combos[i % len(combos)] if i < len(combos) else rng.choice(combos)
        captions.append(rng.choice(TEMPLATES).format(colour=colour, shape=shape, side=side))
        codes.append(render_codes(colour, shape, side))
    return captions, np.stack(codes)


def write_parquet(path: Path, captions: list[str], codes: np.ndarray) -> None:
    table = pa.table({"caption": captions, "encoding": pa.array(codes.tolist(), type=pa.list_(pa.int16()))})
    pq.write_table(table, path)


def train_tokenizer(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE with BART's special tokens and `<s> … </s>` framing, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def build(out: Path, n_train: int = 512, n_val: int = 64, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    train = make_samples(n_train, seed)
    val = make_samples(n_val, seed + 1)
    write_parquet(out / "train.parquet", *train)
    write_parquet(out / "val.parquet", *val)
    train_tokenizer(train[0] + val[0]).save_pretrained(out / "tokenizer")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/tiny"))
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.train, args.val, args.seed)
    print(f"wrote {args.out}/train.parquet, val.parquet and tokenizer/")


if __name__ == "__main__":
    main()
