"""Can torch-xla's CPU devices run a collective? The check the multi-device XLA tests wait on.

`PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 .venv-xla/bin/python scripts/xla_cpu_collectives.py`: one 5-element
all-reduce over every CPU device, in xmp.spawn's thread per device (how Lightning's XLA strategy runs them,
and how a v3-8's processes drive their two cores). Exits 0 and prints the sums when it works. With
torch-xla 2.9.0 on the project's 2-core machine it aborts instead: XLA's rendezvous gets the devices'
threads under different op ids and terminates the process after 10 s.
"""

import torch
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.distributed.xla_multiprocessing as xmp
import torch_xla.runtime as xr


def all_reduce(index: int) -> None:
    t = torch.full((5,), float(xr.global_ordinal() + 1), device=torch_xla.device())
    t = xm.all_reduce(xm.REDUCE_SUM, t)
    print(f"device {xr.global_ordinal()} of {xr.world_size()}: sum {t.cpu().tolist()}", flush=True)


if __name__ == "__main__":
    xmp.spawn(all_reduce, start_method="fork")
