"""Make `import torchvision` work when pip installed its CUDA-only build next to a CPU torch.

open-clip-torch pulls torchvision; on a CPU machine the only torchvision that fits our torch pin is a CUDA
build whose compiled ops do not load, and its import then dies with "operator torchvision::nms does not
exist" (taking transformers and Lightning imports down with it). Declaring the two missing op schemas first
lets the pure-Python parts (transforms, model definitions) import; we use no torchvision C++ op. Does
nothing when torchvision is absent or its ops load (GPU machines, TPU VMs).

torchvision itself is not imported here: it pulls torch._dynamo and sympy (~100 MB of resident memory and a
second of start-up), which sampling, for one, never needs. Whether its compiled ops load is asked of the
library file instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_library = None  # the torch.library.Library must stay alive for the schemas to stay registered


def patch_torchvision() -> str:
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return "patched" if _library is not None else "ok"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "absent"
    import torch

    for path in Path(spec.origin).parent.glob("_C.*"):
        try:
            torch.ops.load_library(str(path))  # what torchvision's own import does first
            return "ok"
        except (OSError, RuntimeError):
            break
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    return "patched"
