"""Collectives on real gloo ranks: exact float64 sums, broadcast, shares, gradient reduction, and
failing fast: when one rank raises, every rank ends promptly with a clear error."""

from __future__ import annotations

import functools
import json
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from golfctl.distributed import (PeerFailed, agree, all_reduce_float64, all_reduce_gradients, broadcast_,
                                 init_distributed, mean_over_ranks, on_main, run_distributed, share, single_process)
from golfctl.errors import UserError
from ranks import rank_outcomes, rank_results, read_rank_files, spawn_ranks


def collectives(ctx) -> dict:
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(1))]
    params[0].grad = torch.full((3,), float(ctx.rank + 1))
    params[1].grad = torch.full((2, 2), 10.0 * (ctx.rank + 1))  # params[2] has no gradient on any rank
    all_reduce_gradients(params, ctx, mean=True)
    summed = [nn.Parameter(torch.zeros(2))]
    summed[0].grad = torch.tensor([1.0, float(ctx.rank)])
    all_reduce_gradients(summed, ctx, mean=False)
    agree(ctx, "config", "the same on every rank")  # agreeing ranks pass
    return {
        "sums": all_reduce_float64([ctx.rank + 0.25, 2.0**53 - 1], ctx),
        "mean": mean_over_ranks(float(ctx.rank), ctx),
        "from_rank1": broadcast_(torch.tensor([float(ctx.rank)]), src=1).item(),
        "share": list(share(list(range(5)), ctx)),
        "grads": [params[0].grad.tolist(), params[1].grad.tolist(), params[2].grad is None, summed[0].grad.tolist()],
        "written_by_main": on_main(ctx, lambda: "done", "testing"),
    }


def test_collectives_on_two_ranks(tmp_path):
    got = rank_results(collectives, tmp_path)
    for rank, result in enumerate(got):
        assert result["sums"] == [1.5, 2.0**54 - 2]  # float64: exact beyond float32's 2**24
        assert result["mean"] == 0.5 and result["from_rank1"] == 1.0
        assert result["grads"] == [[1.5] * 3, [[15.0] * 2] * 2, True, [2.0, 1.0]]
        assert result["written_by_main"] == ("done" if rank == 0 else None)
    assert got[0]["share"] + got[1]["share"] == [0, 1, 2, 3, 4]  # contiguous, disjoint, complete


def _group_freed_after_leaving(folder: str) -> None:
    """A stage whose work imports torch._dynamo (torch.compile and optimizer steps do), then leaves:
    writes whether the process group is freed, so that its gloo worker threads are joined before
    interpreter shutdown (a worker still alive then can abort the finished process)."""
    group = {}

    def work(ctx):
        import torch._dynamo  # noqa: F401
        all_reduce_float64([1.0], ctx)
        group["ref"], group["rank"] = weakref.ref(dist.distributed_c10d._get_default_group()), ctx.rank

    run_distributed(work)
    Path(folder, f"rank{group['rank']}.json").write_text(json.dumps(group["ref"]() is None))


def test_leaving_frees_the_process_group(tmp_path):
    spawn_ranks(functools.partial(_group_freed_after_leaving, str(tmp_path)))
    assert read_rank_files(tmp_path) == [True, True]


def test_single_process_without_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    assert ctx == single_process(torch.device("cpu")) or ctx.device.type != "cpu"
    assert all_reduce_float64([1.0, 2.5], ctx) == [1.0, 2.5] and share([1, 2], ctx) == [1, 2]
    assert run_distributed(lambda c: c.world_size) == 1


def write_fails_on_main(ctx) -> None:
    """Rank 0 fails while 'writing a checkpoint'; the others would wait for it in a barrier."""
    def write():
        raise UserError("disk full while writing ckpt.safetensors")

    on_main(ctx, write, "writing ckpt.safetensors")


def rank1_fails_while_rank0_waits(ctx) -> None:
    """Rank 1 raises while rank 0 sits in an all-reduce that rank 1 will never join."""
    if ctx.rank == 1:
        time.sleep(1.0)  # rank 0 is blocked in the collective by now
        raise UserError("rank 1 ran out of data")
    all_reduce_float64([1.0], ctx)


def ranks_disagree(ctx) -> None:
    agree(ctx, "config", "matrix_lr=0.02" if ctx.rank == 0 else "matrix_lr=0.04")


def test_ranks_that_disagree_all_stop_naming_the_odd_one(tmp_path):
    for outcome in rank_outcomes(ranks_disagree, tmp_path):
        assert outcome["error"] == "UserError" and "rank(s) 1 started with another config" in outcome["message"]


@pytest.mark.parametrize("work, failing, message", [
    (write_fails_on_main, 0, "rank 0 failed while writing ckpt.safetensors"),
    (rank1_fails_while_rank0_waits, 1, "another rank has probably stopped"),
])
def test_one_failing_rank_stops_every_rank_promptly(tmp_path, work, failing, message):
    outcomes = rank_outcomes(work, tmp_path)  # a hang past the timeout fails here
    assert outcomes[failing]["error"] == "UserError"
    for rank, outcome in enumerate(outcomes):
        if rank != failing:
            assert outcome["error"] == PeerFailed.__name__ and message in outcome["message"], outcome
            assert "\n" not in outcome["message"]  # one line: the CLI prints it as `Error: …`
            assert outcome["seconds"] < 60, outcome  # not a collective timeout (NCCL's default is 30 min)
