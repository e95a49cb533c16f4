"""Small collectives over the data-parallel group (gloo on CPU, NCCL on GPU).

Everything the ranks must agree on (global loss normaliser, micro-batch count, skip decision,
metrics) goes through here, so a single-process run (world size 1) needs no special case.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    """An address other nodes can reach this process on (loopback on a one-machine cluster)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # ray is a dependency; this only guards odd installs
        pass
    return "127.0.0.1"


def init_process_group(rank: int, world_size: int) -> None:
    """Joins (or, for one rank, creates) the process group; env MASTER_ADDR/PORT are set by the
    caller (the Ray actor) for several ranks."""
    import deepspeed

    # DeepSpeed's engine reads these even when the group exists already (e.g. made by vLLM).
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ.setdefault("LOCAL_RANK", "0")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}; this worker needs rank {rank} of trainer.world_size={world_size}")
        return
    if world_size == 1:
        # An in-memory store: no TCP port to race other processes of a shared machine for, no file.
        dist.init_process_group(backend(), store=dist.HashStore(), rank=0, world_size=1)
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if world_size > 1 and key not in os.environ:
            raise ValueError(f"environment variable {key} must be set to start rank {rank} of {world_size}")
    deepspeed.init_distributed(dist_backend=backend(), rank=rank, world_size=world_size,
                               auto_mpi_discovery=False, verbose=False)


def _reduce(values: list[float], op: dist.ReduceOp) -> list[float]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_sum(*values: float) -> list[float]:
    return _reduce(list(values), dist.ReduceOp.SUM)


def all_max(*values: float) -> list[float]:
    return _reduce(list(values), dist.ReduceOp.MAX)


def all_gather_objects(obj: Any) -> list[Any]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
