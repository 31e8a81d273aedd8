"""`model_index.json`, the file that lists a saved pipeline's parts: what each entry must hold, checked as it
is read, so a hand-edited or foreign index fails at load naming the key, not later as a `KeyError` or after
sampling."""

from __future__ import annotations

from .generation_config import GenerationConfig, is_whole

# key -> (what it must be, the test); the other keys are optional or checked where they are used
_REQUIRED = {
    "model": ("a sub-folder name", lambda v: isinstance(v, str) and v != ""),
    "tokenizer": ("a sub-folder name", lambda v: isinstance(v, str) and v != ""),
    "vqgan": ("a sub-folder name", lambda v: isinstance(v, str) and v != ""),
    "text_length": ("a whole number >= 1", lambda v: is_whole(v) and v >= 1),
    "generation_config": ("an object of sampling options", lambda v: isinstance(v, dict)),
}
_OPTIONAL = {
    "clip": ("a sub-folder name or null", lambda v: v is None or (isinstance(v, str) and v != "")),
    "text_normalizer": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "decode_batch_size": ("a whole number >= 1", lambda v: is_whole(v) and v >= 1),
}


def check_index(index, name: str) -> dict:
    """The parsed index, unchanged, or `ValueError` naming the first key that is missing or wrong."""
    if not isinstance(index, dict):
        raise ValueError(f"{name}: must hold a JSON object, not {type(index).__name__}")
    for key, (want, ok) in _REQUIRED.items():
        if key not in index:
            raise ValueError(f"{name}: no {key!r} ({want}); save the pipeline again with "
                             "DalleMiniPipeline.save_pretrained, or add it")
        if not ok(index[key]):
            raise ValueError(f"{name}: {key}={index[key]!r} must be {want}")
    for key, (want, ok) in _OPTIONAL.items():
        if key in index and not ok(index[key]):
            raise ValueError(f"{name}: {key}={index[key]!r} must be {want}")
    try:
        GenerationConfig.from_dict(index["generation_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: generation_config: {e}") from None
    return index
