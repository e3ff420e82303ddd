"""Every collective golfctl uses, and the one module that touches `torch.distributed`.

The same entry runs under `torchrun` or as a plain process: `init_distributed` reads the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, plus MASTER_ADDR/MASTER_PORT for the
rendezvous) when it is called, never at import, and without it is a single process of world
size 1. Every collective is a no-op without a process group, so callers need no
`if distributed` branches.

Failing fast. A rank that raises must not leave the others waiting for a timeout (NCCL's is
30 minutes):
- work that only rank 0 does (writing a file) goes through `on_main`, whose outcome every rank
  learns in the same collective: if rank 0 failed, every rank raises at once;
- a rank that raises anywhere else leaves the process group without waiting (`shutdown(meet=False)`);
  a peer blocked in a collective then sees its connection close, and the collective raises
  `PeerFailed`, a one-line user error that points at the failing rank's own `Error:` line.
  (Under torchrun the agent also stops the remaining workers as soon as one exits.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from golfctl.errors import UserError

T = TypeVar("T")


class PeerFailed(UserError):
    """Another rank stopped; its own `Error:` line (or traceback) says why."""


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


def single_process(device: torch.device) -> DistContext:
    """The context of a plain process on `device` (stages that never run under torchrun)."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=device)


def init_distributed() -> DistContext:
    """Read the torchrun environment, pick the device and, for several ranks, join the process group."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    device = _pick_device(local_rank, world_size)
    if world_size > 1 and not _initialized():
        _import_dynamo_first()
        if device.type == "cuda":
            # device_id binds this rank to its GPU and lets NCCL connect eagerly.
            dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _import_dynamo_first() -> None:
    """Import torch._dynamo before the process group exists. Imported later (by torch.compile or an
    optimizer's first step), it indexes torch.distributed's objects, the default group among them,
    so `destroy_process_group` no longer frees the group: its gloo worker threads then live into
    interpreter shutdown, and one still releasing a collective's tensors (which takes the GIL)
    aborts the finished process with SIGABRT ("terminate called without an active exception")."""
    import torch._dynamo  # noqa: F401


def run_distributed(work: Callable[[DistContext], T]) -> T:
    """Run `work` on this rank's context; leave the process group however it ends (unless a caller
    had joined it already: then the caller leaves it, so stages can run one after another).

    After success the ranks meet first: a rank that tears gloo down while a peer is still in its
    last collective aborts the peer. After an error, peers may never arrive, so a failing rank
    leaves without waiting, which is what wakes a peer blocked in a collective."""
    joined = _initialized()  # inside a caller's run_distributed (the exported chain): leave it the group
    ctx = init_distributed()
    try:
        result = work(ctx)
    except BaseException:
        if not joined:
            _leave(ctx, meet=False)
        raise
    if not joined:
        _leave(ctx, meet=True)
    return result


def on_main(ctx: DistContext, work: Callable[[], T], what: str) -> T | None:
    """Rank 0 runs `work` (say, writing a file) while the others wait; every rank learns the outcome
    in one collective, so when rank 0 fails the others raise too instead of waiting in a barrier.
    Returns rank 0's result on rank 0, None elsewhere."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = work()
        except Exception as exc:  # re-raised below, after the peers have been told
            error = exc
    failed, = all_reduce_float64([float(error is not None)], ctx)
    if error is not None:
        raise error
    if failed:
        raise PeerFailed(f"rank 0 failed while {what} (its Error: line says why); rank {ctx.rank} stopped too")
    return result


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place; unchanged without a process group."""
    if _initialized():
        _collective("all_reduce", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` in place with rank `src`'s copy; unchanged without a process group."""
    if _initialized():
        _collective("broadcast", lambda: dist.broadcast(tensor, src=src))
    return tensor


def all_reduce_float64(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few metrics (loss sums, token and byte counts) over ranks in float64.

    float64 keeps integer counts exact up to 2**53 and loss sums free of float32 drift.
    """
    if not ctx.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    return all_reduce_sum_(tensor).tolist()


def agree(ctx: DistContext, what: str, text: str) -> None:
    """Every rank must hold the same `text` (a config, its inputs' identities) as rank 0.

    Rank 0's sha256 is broadcast and each rank says whether its own matches, in one more
    collective, so that on a mismatch every rank stops with the same Error: line naming the ranks
    that differ (say, a rank started with other flags or another data folder)."""
    if not ctx.enabled:
        return
    digest = torch.tensor(list(hashlib.sha256(text.encode()).digest()), dtype=torch.float64, device=ctx.device)
    reference = broadcast_(digest.clone(), src=0)
    differs = [0.0] * ctx.world_size
    differs[ctx.rank] = float(not torch.equal(reference, digest))
    ranks = [r for r, flag in enumerate(all_reduce_float64(differs, ctx)) if flag]
    if ranks:
        raise UserError(f"rank(s) {', '.join(map(str, ranks))} started with another {what} than rank 0; start every "
                        "rank with the same command line and files")


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    """The mean of one number over ranks (ranks agree on time and logged losses this way)."""
    total, = all_reduce_float64([value], ctx)
    return total / ctx.world_size


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], ctx: DistContext, mean: bool) -> None:
    """Sum (or average, with `mean`) the gradients of `params` over ranks in one flat all-reduce.

    Parameters without a gradient are skipped, so every rank must have the same ones set (they
    run the same graph)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not ctx.enabled or not grads:
        return
    flat = all_reduce_sum_(torch.cat([g.reshape(-1) for g in grads]))  # (Σ numel,)
    if mean:
        flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def share(items: Sequence[T], ctx: DistContext) -> Sequence[T]:
    """This rank's contiguous slice of `items`; sizes differ by at most one, and some may be empty."""
    n = len(items)
    return items[n * ctx.rank // ctx.world_size: n * (ctx.rank + 1) // ctx.world_size]


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) without one."""
    if _initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _leave(ctx: DistContext, meet: bool) -> None:
    if ctx.enabled and _initialized():
        if meet:
            _collective("barrier", dist.barrier)
        dist.destroy_process_group()


def _collective(name: str, call: Callable[[], object]) -> None:
    """Run one collective; a peer that went away becomes a `PeerFailed` user error, not a traceback."""
    try:
        call()
    except RuntimeError as exc:  # gloo: "Connection closed by peer"; NCCL: a communicator error
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise PeerFailed(f"{name} across ranks failed ({detail}); another rank has probably stopped, "
                         "and its Error: line says why") from None


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
