"""A judge that checks a shape scene against its caption from the pixels alone.

It parses a caption back into attributes and measures each from the image: colour by the nearest palette
entry of the foreground pixels, position by their centroid, size by their area, shape by how they fill their
bounding box. Its thresholds are fixed here, before any model is trained, and tested on the dataset's own
renders (right on all of them).
"""

from __future__ import annotations

import re

import numpy as np

from .scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene

_WORDS = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "position": POSITIONS}


def parse_caption(caption: str) -> Scene:
    """The attributes a caption asks for (each must be named exactly once)."""
    found = {}
    for attr, words in _WORDS.items():
        hits = [w for w in words if re.search(rf"\b{w}\b", caption)]
        if len(hits) != 1:
            raise ValueError(f"caption {caption!r} names {len(hits)} {attr}s; expected exactly one")
        found[attr] = hits[0]
    return Scene(**found)


BACKGROUND_DISTANCE = 120  # a pixel farther than this (L1 over RGB) from white is foreground
LARGE_SIDE = 0.375  # bounding-box side / image side between small (0.3) and large (0.45)


def measure(image) -> dict[str, str]:
    """Colour, shape, size and position measured from an RGB image (PIL or HxWx3 uint8)."""
    rgb = np.asarray(image, dtype=np.int32)[..., :3]
    fg = np.abs(255 - rgb).sum(-1) > BACKGROUND_DISTANCE
    if fg.sum() < 4:
        return {"colour": "none", "shape": "none", "size": "none", "position": "none"}
    palette = np.array(list(COLOURS.values()))
    nearest = np.abs(rgb[fg][:, None, :] - palette[None]).sum(-1).argmin(1)
    colour = list(COLOURS)[np.bincount(nearest, minlength=len(palette)).argmax()]
    ys, xs = np.nonzero(fg)
    h, w = fg.shape
    position = ("top" if ys.mean() < h / 2 else "bottom") + " " + ("left" if xs.mean() < w / 2 else "right")
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / max(h, w)
    size = "large" if side > LARGE_SIDE else "small"
    return {"colour": colour, "shape": _shape(fg[ys.min():ys.max() + 1, xs.min():xs.max() + 1]),
            "size": size, "position": position}


def _shape(box: np.ndarray) -> str:
    """From the occupancy of the bounding box at its four quarter points: a circle covers all four, a
    triangle (apex up) only the lower two, a cross none (they fall between its arms); a square fills the
    box."""
    if box.mean() > 0.9:
        return "square"
    n_y, n_x = box.shape
    at = lambda fy, fx: int(box[round(fy * (n_y - 1)), round(fx * (n_x - 1))])  # noqa: E731
    upper = at(0.25, 0.25) + at(0.25, 0.75)
    lower = at(0.75, 0.25) + at(0.75, 0.75)
    if upper + lower >= 3:
        return "circle"
    if lower == 2 and upper == 0:
        return "triangle"
    return "cross" if upper + lower == 0 else "unclear"


def judge(image, caption: str) -> dict[str, bool]:
    """Per attribute: is what the caption asks for in the picture? Plus `all`."""
    asked, seen = parse_caption(caption), measure(image)
    result = {attr: seen[attr] == getattr(asked, attr) for attr in _WORDS}
    result["all"] = all(result.values())
    return result
