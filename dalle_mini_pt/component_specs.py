"""Components named by a Hydra yaml on a command line (`--vqgan conf/vqgan/tiny.yaml`, `--clip ...`).

To Hydra a yaml's `_target_` may be any importable callable (it refuses only a few, such as `os.system`), so
a spec from outside could run `shutil.copyfile` or worse while it is "loaded". Each component kind builds
only the project's own classes: every `_target_` in the file is checked, as written, before anything is
imported or built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Union

from hydra.utils import instantiate
from omegaconf import OmegaConf

COMPONENT_TARGETS = {
    "vqgan": ("dalle_mini_pt.vqgan.VQGAN", "dalle_mini_pt.vqgan.VQGANConfig"),
    "clip": ("dalle_mini_pt.clip_scorer.ClipScorer.from_config",
             "dalle_mini_pt.clip_scorer.ClipScorer.from_open_clip", "dalle_mini_pt.clip_scorer.ClipScorer"),
}


def targets(node) -> Iterator[str]:
    """Every `_target_` value in a config tree, nested ones included, uninterpolated."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            else:
                yield from targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from targets(value)


def instantiate_component(path: Union[str, Path], kind: str):
    """The `kind` component ("vqgan" or "clip") a Hydra yaml describes; `ValueError` naming any `_target_`
    that is not one of that component's own classes, before anything is built."""
    allowed = COMPONENT_TARGETS[kind]
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    top = tree.get("_target_") if isinstance(tree, dict) else None
    if top not in allowed:
        raise ValueError(f"{path}: a --{kind} yaml must build one of {list(allowed)} at its top "
                         f"(`_target_: {allowed[0]}`); its _target_ is {top!r}")
    refused = sorted({t for t in targets(tree) if t not in allowed})
    if refused:
        raise ValueError(f"{path}: _target_ {refused[0]!r} is not one of the {kind} component's classes "
                         f"{list(allowed)}; a component yaml builds only the project's own classes")
    return instantiate(OmegaConf.load(path))
