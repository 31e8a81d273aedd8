"""dalle_mini_pt: DALL·E mini in PyTorch Lightning."""

from .torchvision_fix import patch_torchvision

patch_torchvision()  # before anything imports transformers, Lightning or open_clip

from .config import DalleBartConfig  # noqa: E402
from .model import DalleBart  # noqa: E402
from .sampling import generate  # noqa: E402

__all__ = ["DalleBart", "DalleBartConfig", "generate", "patch_torchvision"]
__version__ = "0.1.0"
