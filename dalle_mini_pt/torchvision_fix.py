"""Make `import torchvision` work when pip installed its CUDA-only build next to a CPU torch.

open-clip-torch pulls torchvision; on a CPU machine the only torchvision that fits our torch pin is a CUDA
build whose compiled ops do not load, and its import then dies with "operator torchvision::nms does not
exist" (taking transformers and Lightning imports down with it). Declaring the two missing op schemas first
lets the pure-Python parts (transforms, model definitions) import; we use no torchvision C++ op. Does
nothing when torchvision is absent or loads normally (GPU machines, TPU VMs).
"""

from __future__ import annotations

import importlib.util
import sys

_library = None  # the torch.library.Library must stay alive for the schemas to stay registered


def patch_torchvision() -> str:
    global _library
    if importlib.util.find_spec("torchvision") is None:
        return "absent"
    import torch

    try:
        import torchvision  # noqa: F401

        return "ok"
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811

    return "patched"
