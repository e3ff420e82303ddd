"""The one module that touches `torch.distributed`.

The same entry runs under `torchrun` or as a plain process: `init_distributed` reads the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, plus MASTER_ADDR/MASTER_PORT for the
rendezvous) when it is called, never at import, and without it is a single process of world
size 1. Every collective here is a no-op when no process group is initialised, so callers
need no `if distributed` branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int  # global rank, 0 .. world_size - 1
    world_size: int
    local_rank: int  # rank on this machine; picks the GPU
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes artifacts and logs; the others wait."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Read the torchrun environment, pick the device and, for several ranks, join the process group."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    device = _pick_device(local_rank, world_size)
    if world_size > 1 and not _initialized():
        if device.type == "cuda":
            # device_id binds this rank to its GPU and lets NCCL connect eagerly.
            dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext, meet: bool = True) -> None:
    """Leave the process group. After success, `meet` first: a rank that tears gloo down while a
    peer is still in its last collective aborts the peer. After an error, peers may never
    arrive, so a failing rank leaves without waiting."""
    if ctx.enabled and _initialized():
        if meet:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled and _initialized():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place; unchanged without a process group."""
    if _initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` in place with rank `src`'s copy; unchanged without a process group."""
    if _initialized():
        dist.broadcast(tensor, src=src)
    return tensor


def all_reduce_float64(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few metrics (loss sums, token and byte counts) over ranks in float64.

    float64 keeps integer counts exact up to 2**53 and loss sums free of float32 drift.
    """
    if not ctx.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    return all_reduce_sum_(tensor).tolist()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) without one."""
    if _initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _pick_device(local_rank: int, world_size: int) -> torch.device:
    """cuda:local_rank, else MPS for a single process, else CPU.

    Several ranks without CUDA use CPU even on a Mac: gloo, the only backend there, cannot
    reduce MPS tensors.
    """
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    if world_size == 1 and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
