"""One shard index per run: global rank 0 reads the footers, every other rank receives the index from it.

Every rank needs the same index (it is what splits an epoch into equal parts). Built on every rank, a
pod's hundreds of processes would each read every footer before the first step; instead rank 0 builds it
(`ShardIndex.build`, footers in parallel threads) and the others wait in a broadcast, then unpickle rank
0's bytes. A failure on rank 0 is sent the same way, so every rank stops with its message rather than
waiting for an index that never comes.

The bytes travel as int32 tensors through the strategy's tensor broadcast: XLA's needs equal shapes on
every rank (so the length goes first) and its object broadcast cannot load arbitrary classes.
"""

from __future__ import annotations

import pickle
from typing import Callable, Optional, TypeVar

import numpy as np
import torch

T = TypeVar("T")
Broadcast = Callable[[torch.Tensor], torch.Tensor]  # a CPU tensor from rank 0 -> that tensor on every rank


def built_once(build: Callable[[], T], rank: int, broadcast: Optional[Broadcast]) -> T:
    """`build()` on rank 0 and its result on every rank; just `build()` without a broadcast (one
    process)."""
    if broadcast is None:
        return build()
    payload = _outcome(build) if rank == 0 else b""
    result = pickle.loads(send_bytes(payload, broadcast))
    if isinstance(result, BaseException):
        raise result
    return result


def _outcome(build: Callable[[], T]) -> bytes:
    try:
        return pickle.dumps(build(), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # any failure must reach the other ranks, or they hang
        try:
            return pickle.dumps(err)
        except Exception:  # an exception that does not pickle still sends its message
            return pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))


def send_bytes(payload: bytes, broadcast: Broadcast) -> bytes:
    """Rank 0's `payload` on every rank (the others pass b"")."""
    size = int(broadcast(torch.tensor([len(payload)], dtype=torch.int32))[0])
    words = -(-size // 4)
    data = np.frombuffer(payload.ljust(words * 4, b"\0"), dtype=np.int32) if payload else \
        np.zeros(words, dtype=np.int32)
    received = broadcast(torch.from_numpy(data.copy()))
    return received.cpu().numpy().astype(np.int32).tobytes()[:size]


def torch_broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """A broadcast from rank 0 over torch.distributed's default group (a run launched without a
    Lightning trainer); the object path moves the tensor to the device the backend needs."""
    box = [tensor]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
