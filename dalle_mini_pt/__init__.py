"""dalle_mini_pt: DALL·E mini in PyTorch Lightning."""

from .torchvision_fix import patch_torchvision

patch_torchvision()  # before anything imports transformers, Lightning or open_clip

from .config import DalleBartConfig  # noqa: E402
from .model import DalleBart  # noqa: E402
from .sampling import generate  # noqa: E402
from .hub import load_pretrained, load_tokenizer, push_to_hub, save_pretrained  # noqa: E402
from .pipeline import DalleMiniPipeline  # noqa: E402

__all__ = ["DalleBart", "DalleBartConfig", "DalleMiniPipeline", "generate", "load_pretrained", "load_tokenizer",
           "patch_torchvision", "push_to_hub", "save_pretrained"]
__version__ = "0.1.0"
