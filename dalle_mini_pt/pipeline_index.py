"""The files that describe a saved pipeline beside its component folders, checked as they are read so that a
hand-edited or foreign one fails at load naming the key, not later as a `KeyError` or after sampling.

- `model_index.json` names each component's `[library, class]` as diffusers writes it (the component sits in
  the folder of its key: `"vqgan": ["dalle_mini_pt", "VQGAN"]` is `vqgan/`; `[null, null]` where the
  pipeline has none), beside the pipeline's own settings.
- `generation_config.json` holds its sampling defaults, as transformers saves a model's.

Pipelines saved by earlier versions read the same: their index names each component's folder
(`"vqgan": "vqgan"`, `"clip": null`) and holds the sampling defaults inline under `generation_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Optional

from .generation_config import GenerationConfig, is_whole
from .hub.files import CONFIG_NAME, Source, load_config_json

INDEX_NAME = "model_index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
LIBRARY = "dalle_mini_pt"
PIPELINE_CLASS = "DalleMiniPipeline"
# key -> the class it holds; its folder is the key
COMPONENT_CLASSES = {"model": "DalleBart", "tokenizer": "TextTokenizer", "vqgan": "VQGAN",
                     "clip": "ClipScorer"}
OPTIONAL_COMPONENTS = ("clip",)
COMPONENT_FORM = "a sub-folder name (as earlier versions saved) or a [library, class] pair"
DEFAULT_DECODE_BATCH_SIZE = 8

# key -> (what it must be, the test); the other keys are optional or checked where they are used
_SETTINGS = {
    "text_length": ("a whole number >= 1", lambda v: is_whole(v) and v >= 1),
}
_OPTIONAL = {
    "text_normalizer": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "decode_batch_size": ("a whole number >= 1", lambda v: is_whole(v) and v >= 1),
    "generation_config": ("an object of sampling options", lambda v: isinstance(v, dict)),
}


@dataclass
class PipelineIndex:
    """What a `model_index.json` says, whichever version wrote it."""

    folders: dict[str, str]  # component key -> its sub-folder; a component the pipeline lacks is absent
    text_length: int
    text_normalizer: Optional[dict]
    decode_batch_size: int
    # the sampling defaults held inline by an index of an earlier version; None: generation_config.json
    generation_config: Optional[GenerationConfig]


def index_values(has_clip: bool, text_length: int, text_normalizer: Optional[dict],
                 decode_batch_size: int, version: str) -> dict:
    """The `model_index.json` of a pipeline with these parts and settings."""
    components = {key: [LIBRARY, cls] if key != "clip" or has_clip else [None, None]
                  for key, cls in COMPONENT_CLASSES.items()}
    return {"_class_name": PIPELINE_CLASS, f"_{LIBRARY}_version": version, **components,
            "text_length": text_length, "text_normalizer": text_normalizer,
            "decode_batch_size": decode_batch_size}


def _folder(key: str, value, name: str) -> Optional[str]:
    """The sub-folder of component `key`, None where the pipeline has none."""
    if isinstance(value, str) and value:  # an earlier version's index: the folder itself
        if value.startswith(("/", "\\")) or ".." in PurePosixPath(value.replace("\\", "/")).parts:
            raise ValueError(f"{name}: {key}={value!r} must be a sub-folder of the pipeline's own folder")
        return value
    if value is None and key in OPTIONAL_COMPONENTS:
        return None
    expected = [LIBRARY, COMPONENT_CLASSES[key]]
    if isinstance(value, list) and len(value) == 2:
        if value == [None, None]:
            if key in OPTIONAL_COMPONENTS:
                return None
            raise ValueError(f"{name}: {key}={value!r} says the pipeline has no {key}, which every pipeline "
                             f"needs; save the pipeline again with DalleMiniPipeline.save_pretrained")
        if value == expected:
            return key
        raise ValueError(f"{name}: {key}={value!r}: dalle_mini_pt loads its {key} as {expected}; a "
                         "pipeline of another library or class loads with that library")
    raise ValueError(f"{name}: {key}={value!r} must be {COMPONENT_FORM}, such as {expected}")


def read_index(index, name: str) -> PipelineIndex:
    """The parsed index as a `PipelineIndex`, or `ValueError` naming the first key that is missing or
    wrong."""
    if not isinstance(index, dict):
        raise ValueError(f"{name}: must hold a JSON object, not {type(index).__name__}")
    if index.get("_class_name", PIPELINE_CLASS) != PIPELINE_CLASS:
        raise ValueError(f"{name}: _class_name={index['_class_name']!r}: this is not a {PIPELINE_CLASS}; "
                         "load it with the library that saved it")
    required = [k for k in COMPONENT_CLASSES if k not in OPTIONAL_COMPONENTS]
    for key, want in [*((k, COMPONENT_FORM) for k in required), *((k, w) for k, (w, _) in _SETTINGS.items())]:
        if key not in index:
            raise ValueError(f"{name}: no {key!r} ({want}); save the pipeline again with "
                             "DalleMiniPipeline.save_pretrained, or add it")
    folders = {key: _folder(key, index.get(key), name) for key in COMPONENT_CLASSES}
    for key, (want, ok) in {**_SETTINGS, **_OPTIONAL}.items():
        if key in index and not ok(index[key]):
            raise ValueError(f"{name}: {key}={index[key]!r} must be {want}")
    generation = index.get("generation_config")
    if generation is not None:
        generation = check_generation_config(generation, f"{name}: generation_config")
    return PipelineIndex({k: v for k, v in folders.items() if v is not None}, index["text_length"],
                         index.get("text_normalizer"),
                         index.get("decode_batch_size", DEFAULT_DECODE_BATCH_SIZE), generation)


def check_generation_config(values, name: str) -> GenerationConfig:
    """The sampling defaults `values` hold, or `ValueError` naming `name` and the option."""
    if not isinstance(values, dict):
        raise ValueError(f"{name}: must hold an object of sampling options, not {type(values).__name__}")
    try:
        return GenerationConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None


def read_generation_config(source: Source) -> GenerationConfig:
    """The sampling defaults of a pipeline whose index does not hold them (every index but an earlier
    version's)."""
    path = source.file(GENERATION_CONFIG_NAME)
    if path is None:
        raise FileNotFoundError(f"{source.name}: no {GENERATION_CONFIG_NAME} beside its {INDEX_NAME} (the "
                                "pipeline's sampling defaults); save the pipeline again with "
                                "DalleMiniPipeline.save_pretrained, or add it")
    name = f"{source.name}/{GENERATION_CONFIG_NAME}"
    return check_generation_config(load_config_json(path), name)


def held_component(source: Source) -> Optional[str]:
    """The component class a folder or repo without a model_index.json holds, when it is one we know."""
    if source.file("model.yaml") is not None or source.file("configs/model.yaml") is not None:
        return "VQGAN"  # taming's layout
    path = source.file(CONFIG_NAME)
    try:
        config = load_config_json(path) if path is not None else None
    except ValueError:
        return None
    return component_class(config) if isinstance(config, dict) else None


def component_class(config: dict) -> Optional[str]:
    """Which component a `config.json` describes, for a folder or repo that is no pipeline: ours name their
    class under `architectures`; the reference's DalleBart has `image_vocab_size` (or is the 2021 BART),
    vqgan-jax's VQGAN `n_embed` and `ch_mult`."""
    named = [c for c in COMPONENT_CLASSES.values() if c in (config.get("architectures") or [])]
    if named:
        return named[0]
    if "image_vocab_size" in config or config.get("model_type") in ("dallebart", "bart"):
        return "DalleBart"
    if "n_embed" in config and "ch_mult" in config:
        return "VQGAN"
    return None


def not_a_pipeline(name: str, source: Source) -> FileNotFoundError:
    """The error for `name`, which has no model_index.json, naming what it holds (when that is a component
    we know) and the call that builds a pipeline from it."""
    held = held_component(source)
    build = "DalleMiniPipeline.from_components(model=..., vqgan=..., clip=...)"
    if held == "DalleBart":
        return FileNotFoundError(f"{name} is a DalleBart model, not a pipeline (it has no {INDEX_NAME}): "
                                 f"build one from it with DalleMiniPipeline.from_components(model={name!r}, "
                                 "vqgan=...), e.g. vqgan='dalle-mini/vqgan_imagenet_f16_16384'")
    key = {"VQGAN": "vqgan", "ClipScorer": "clip"}.get(held)
    if key is not None:
        return FileNotFoundError(f"{name} is a {held}, not a pipeline (it has no {INDEX_NAME}): pass it as "
                                 f"{build.replace(f'{key}=...', f'{key}={name!r}')}")
    return FileNotFoundError(f"{name}: no {INDEX_NAME}, so not a pipeline saved by "
                             f"DalleMiniPipeline.save_pretrained; to build one from separately saved "
                             f"components use {build}")
