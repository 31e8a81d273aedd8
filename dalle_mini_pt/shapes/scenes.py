"""Procedural caption–image scenes: the data of the embedded default.

A scene is one shape (circle, square, triangle, cross) of a colour, size (small, large) and position (a
quadrant) on a white background, drawn without anti-aliasing. Captions state all four attributes in varied
phrasing. Everything is deterministic from a seed, and some (colour, shape) pairs are held out of training
so generalisation to unseen combinations can be measured.

Two options teach colour and shape as separate factors (`make_split(pairs=, drop_attribute=)`): scenes of two
objects in two quadrants, captioned one object after the other ("a small red circle in the top left and a
large blue square in the bottom right"), and captions that leave the colour or the shape unsaid ("a small
triangle in the top left", "a large red shape at the bottom right"). Neither ever shows a held-out pair.

Scenes render at 64×64 by default: at 32×32 a small cross is 9 pixels wide and its arms blur into a circle
(6% of ground-truth small crosses misjudged), while at 64×64 the judge is exact on every render we tried.

`judge.py` reads a picture back against its caption.

    python -m dalle_mini_pt.shapes.scenes --out DIR --split train --n 4000   # an image folder
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20),
           "purple": (140, 40, 170)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.3, "large": 0.45}  # side of the shape's box, as a fraction of the image side
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
HELD_OUT = (("red", "triangle"), ("blue", "cross"), ("yellow", "circle"))  # never in training
# one object of a two-object scene; objects are joined with " and "
OBJECT_TEMPLATES = (
    "a {size} {colour} {shape} in the {position}",
    "a {colour} {shape}, {size}, at the {position}",
    "a {size} {shape} in {colour} in the {position}",
)
# one object with its colour or its shape left unsaid
PARTIAL_TEMPLATES = {
    "colour": ("a {size} {shape} in the {position} on a white background", "{size} {shape}, {position}"),
    "shape": ("a {size} {colour} shape in the {position} on a white background",
              "{size} {colour} shape, {position}"),
}
TEMPLATES = (
    "a {size} {colour} {shape} in the {position} on a white background",
    "{size} {colour} {shape}, {position}",
    "the {position} corner has a {size} {colour} {shape}",
    "a {colour} {shape}, {size}, at the {position}",
    "there is a {size} {shape} in {colour} in the {position}",
)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str

    def caption(self, rng: random.Random) -> str:
        return rng.choice(TEMPLATES).format(**self.__dict__)

    def phrase(self, rng: random.Random) -> str:
        return rng.choice(OBJECT_TEMPLATES).format(**self.__dict__)

    def partial_caption(self, unsaid: str, rng: random.Random) -> str:
        return rng.choice(PARTIAL_TEMPLATES[unsaid]).format(**self.__dict__)


def all_scenes() -> list[Scene]:
    return [Scene(*a) for a in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS)]


def split_scenes(split: str) -> list[Scene]:
    """`train`/`validation` share the seen combinations; `heldout` has only the held-out pairs; `all` has
    every scene (for the image tokenizer alone, which never sees a caption)."""
    seen = [s for s in all_scenes() if (s.colour, s.shape) not in HELD_OUT]
    if split in ("train", "validation"):
        return seen
    if split == "heldout":
        return [s for s in all_scenes() if (s.colour, s.shape) in HELD_OUT]
    if split == "all":
        return all_scenes()
    raise ValueError(f"split={split!r}: use train, validation, heldout or all")


def named_pairs(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names, one per object (objects are joined with " and ")."""
    pairs = set()
    for part in caption.split(" and "):
        colours = [c for c in COLOURS if re.search(rf"\b{c}\b", part)]
        shapes = [s for s in SHAPES if re.search(rf"\b{s}\b", part)]
        pairs |= {(c, s) for c in colours for s in shapes}
    return pairs


def _polygon(shape: str, x0: float, y0: float, side: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(x0 + side / 2, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    t = side / 3  # cross: arms one third of the box wide
    return [(x0 + t, y0), (x0 + 2 * t, y0), (x0 + 2 * t, y0 + t), (x0 + side, y0 + t),
            (x0 + side, y0 + 2 * t), (x0 + 2 * t, y0 + 2 * t), (x0 + 2 * t, y0 + side), (x0 + t, y0 + side),
            (x0 + t, y0 + 2 * t), (x0, y0 + 2 * t), (x0, y0 + t), (x0 + t, y0 + t)]


RESOLUTION = 64
GRID = 8  # the shapes VQGAN's code size in pixels (conf/model/vqgan_shapes.yaml: 64 px -> 8×8 codes)


def render(scene: Scene, resolution: int, rng: random.Random,
           image: Optional[Image.Image] = None) -> Image.Image:
    """The scene, with the shape placed at a random offset inside its quadrant (drawn onto `image`, for a
    second object, else onto white). Offsets are multiples of `GRID`, so every code of the VQGAN sees one of
    a fixed set of shape pieces: without the snap a code could hold any sub-pixel phase of an edge, which the
    CPU-sized models could not fit in the time budget."""
    image = Image.new("RGB", (resolution, resolution), "white") if image is None else image
    half, side = resolution / 2, SIZES[scene.size] * resolution
    grid = GRID * resolution / RESOLUTION
    steps = int(max(0.0, half - side - 2) // grid)
    x0 = (half if "right" in scene.position else 0) + 1 + grid * rng.randint(0, steps)
    y0 = (half if "bottom" in scene.position else 0) + 1 + grid * rng.randint(0, steps)
    draw, fill = ImageDraw.Draw(image), COLOURS[scene.colour]
    box = [x0, y0, x0 + side - 1, y0 + side - 1]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_polygon(scene.shape, x0, y0, side - 1), fill=fill)
    return image


def make_split(split: str, n: int, resolution: int = RESOLUTION, seed: int = 0, pairs: float = 0.0,
               drop_attribute: float = 0.0) -> tuple[list[str], list[Image.Image]]:
    """n captioned renders of the split's scenes, cycling through every scene before repeating. A share
    `pairs` of them get a second object of the split in another quadrant; a share `drop_attribute` of the
    single-object captions leave the colour or the shape unsaid (half each)."""
    if not (0 <= pairs <= 1 and 0 <= drop_attribute <= 1):
        raise ValueError(f"pairs={pairs} and drop_attribute={drop_attribute} are shares: each within [0, 1]")
    rng = random.Random(f"{seed}-{split}")
    scenes = split_scenes(split)
    order = [scenes[i % len(scenes)] for i in range(n)]
    rng.shuffle(order)
    if not (pairs or drop_attribute):  # the one-object stream, draw for draw
        captions = [s.caption(rng) for s in order]
        return captions, [render(s, resolution, rng) for s in order]
    captions, images = [], []
    for scene in order:
        if rng.random() < pairs:
            other = rng.choice([s for s in scenes if s.position != scene.position])
            captions.append(f"{scene.phrase(rng)} and {other.phrase(rng)}")
            images.append(render(other, resolution, rng, render(scene, resolution, rng)))
            continue
        if rng.random() < drop_attribute:
            captions.append(scene.partial_caption(rng.choice(("colour", "shape")), rng))
        else:
            captions.append(scene.caption(rng))
        images.append(render(scene, resolution, rng))
    return captions, images


def write_folder(out, split: str, n: int, resolution: int = RESOLUTION, seed: int = 0, **options) -> Path:
    """The split as an img2dataset-style folder (`00000.png` + `00000.txt`), the encoder tool's input.
    PNG, not JPEG: compression artefacts would blur the flat colours the judge measures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (caption, image) in enumerate(zip(*make_split(split, n, resolution, seed, **options))):
        image.save(out / f"{i:05d}.png")
        (out / f"{i:05d}.txt").write_text(caption + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Write rendered shape scenes as an image folder.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="train", choices=["train", "validation", "heldout"])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--resolution", type=int, default=RESOLUTION)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_folder(args.out, args.split, args.n, args.resolution, args.seed))


if __name__ == "__main__":
    main()
