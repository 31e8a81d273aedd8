"""dalle_mini_pt: DALL·E mini in PyTorch Lightning.

The public names load on first use (PEP 562), so `import dalle_mini_pt.model` costs torch and the hub client
alone: sampling needs neither transformers, Hydra nor open_clip.
"""

import importlib

from .torchvision_fix import patch_torchvision

patch_torchvision()  # before anything imports transformers, Lightning or open_clip

_SOURCES = {"DalleBartConfig": "config", "DalleBart": "model", "GenerationConfig": "generation_config",
            "generate": "sampling", "generate_stream": "sampling", "load_tokenizer": "tokenizer",
            "TextTokenizer": "tokenizer", "VQGAN": "vqgan", "ClipScorer": "clip_scorer",
            "DalleMiniPipeline": "pipeline"}
__all__ = sorted([*_SOURCES, "patch_torchvision"])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
