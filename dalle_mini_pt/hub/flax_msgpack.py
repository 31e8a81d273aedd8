"""Flax's `flax_model.msgpack` files read with the `msgpack` package alone (no jax, no flax).

msgpack ext type 1 is an ndarray as (shape, dtype name, bytes), 2 a complex scalar, 3 a numpy scalar; arrays
over 1 GiB are split into `__msgpack_chunked_array__` dicts. The result is one flat dict of tensors keyed by
the parameter path (`model/encoder/…/kernel`), which the Flax layout readers map onto our names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import msgpack
import numpy as np
import torch

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64, "int32": torch.int32, "int64": torch.int64, "int8": torch.int8,
                 "uint8": torch.uint8, "bool": torch.bool}
# Flax parameter leaf -> torch parameter name
PARAM = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


def _array(data: bytes) -> torch.Tensor:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode()
    if name not in _TORCH_DTYPES:
        raise ValueError(f"unsupported array dtype {name!r}")
    if name == "bfloat16":  # numpy has no bfloat16: reinterpret the raw 16-bit words
        return torch.from_numpy(np.frombuffer(buffer, np.uint16).copy()).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(np.frombuffer(buffer, np.dtype(name)).copy()).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 1:
        return _array(data)
    if code == 2:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    if code == 3:
        return _array(data).item()
    raise ValueError(f"unknown msgpack extension type {code}")


def _unchunk(node: dict) -> torch.Tensor:
    chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    shape = [node["shape"][str(i)] for i in range(len(node["shape"]))]
    return torch.cat([c.reshape(-1) for c in chunks]).reshape(shape)


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "__msgpack_chunked_array__" in value:
            yield path, _unchunk(value)
        elif isinstance(value, dict):
            yield from _flatten(value, path + "/")
        else:
            yield path, value


def read_flax_msgpack(path) -> dict[str, torch.Tensor]:
    """Flat {"model/encoder/…/kernel": tensor} from a flax `to_bytes`/`msgpack_serialize` file."""
    data = Path(path).read_bytes()
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)
    except (ValueError, msgpack.UnpackException) as err:
        raise ValueError(f"{path}: not a complete flax msgpack file ({len(data)} bytes; truncated or "
                         f"corrupt: {err}). Download it again.") from err
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: holds a {type(tree).__name__}, not a flax parameter tree")
    tree = tree.get("params", tree)  # some tools save {"params": …}
    flat = dict(_flatten(tree))
    bad = [k for k, v in flat.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries {bad[:5]} are not arrays; this is not a file of parameters")
    return flat
