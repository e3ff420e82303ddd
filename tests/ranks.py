"""Running a function on several real gloo ranks from a test (torch.multiprocessing, one port each)."""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp

from golfctl.distributed import DistContext, run_distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, main: Callable[[], None], outcomes: str | None) -> None:
    torch.set_num_threads(1)  # several ranks share two cores
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if outcomes is None:
        main()
        return
    start, outcome = time.monotonic(), {"error": None}
    try:
        main()
    except Exception as exc:  # recorded for the test to read
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["seconds"] = time.monotonic() - start
    Path(outcomes, f"rank{rank}.json").write_text(json.dumps(outcome))


def spawn_ranks(main: Callable[[], None], world_size: int = 2) -> None:
    """Run `main()` in `world_size` processes holding the torchrun environment of one rank each (a
    module-level function or a partial of one: it is pickled); raise if any fails."""
    mp.spawn(_rank_main, args=(world_size, free_port(), main, None), nprocs=world_size, join=True)


def run_ranks(work: Callable[[DistContext], None], world_size: int = 2) -> None:
    """Run `work(ctx)` on `world_size` gloo ranks, through `run_distributed` as a stage runs; raise if any fails."""
    spawn_ranks(functools.partial(run_distributed, work), world_size)


def read_rank_files(folder: Path, world_size: int = 2) -> list:
    """The JSON each rank wrote to `folder`/rank{r}.json, in rank order."""
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world_size)]


def _write_result(work: Callable[[DistContext], object], folder: str, ctx: DistContext) -> None:
    Path(folder, f"rank{ctx.rank}.json").write_text(json.dumps(work(ctx)))


def rank_results(work: Callable[[DistContext], object], folder: Path, world_size: int = 2) -> list:
    """What `work(ctx)` returns (JSON-able) on each of `world_size` gloo ranks, in rank order."""
    run_ranks(functools.partial(_write_result, work, str(folder)), world_size)
    return read_rank_files(folder, world_size)


def rank_outcomes(work: Callable[[DistContext], None], folder: Path, world_size: int = 2,
                  timeout: float = 120.0) -> list[dict]:
    """Run `work` on gloo ranks that may fail; each rank's {"error", "message", "seconds"} in rank order.
    A rank still running after `timeout` seconds (hung in a collective) fails the test."""
    procs = mp.start_processes(_rank_main, args=(world_size, free_port(), functools.partial(run_distributed, work),
                                                 str(folder)), nprocs=world_size,
                               join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not procs.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            raise AssertionError(f"ranks still running after {timeout:.0f}s: a rank hangs in a collective")
    return read_rank_files(folder, world_size)
