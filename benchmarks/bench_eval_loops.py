"""Does extra depth at evaluation help? Plain validation BPB of a trained run at several loop counts.

The `seed-v2` design loops its blocks twice as often at evaluation as in training, claiming
the extra depth is free test-time compute. This measures the claim on a real run: the
checkpoint's EMA weights (and raw weights) scored on the validation split with loops =
1, the training count, and multiples of it.

    .venv/bin/python benchmarks/bench_eval_loops.py [--run artifacts/run] [--data artifacts/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from golfctl.bpb import ByteTables, TorchByteTables
from golfctl.checkpoint import load_checkpoint
from golfctl.config import TrainConfig, config_from_dict
from golfctl.dataset import open_dataset
from golfctl.distributed import init_distributed
from golfctl.model import GPT
from golfctl.tokenizer import load_tokenizer
from golfctl.validation import plain_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("artifacts/run"))
    parser.add_argument("--data", type=Path, default=Path("artifacts/data"))
    args = parser.parse_args()

    ckpt = load_checkpoint(args.run / "ckpt.safetensors")
    ctx = init_distributed()
    dataset = open_dataset(args.data)
    tables = TorchByteTables(ByteTables.from_tokenizer(load_tokenizer(dataset.tokenizer_path)), ctx.device)
    val = dataset.splits["val"].load_tokens()
    train_loops = ckpt.config["num_loops"]
    loop_counts = sorted({1, train_loops, 2 * train_loops, 3 * train_loops})
    print(f"run {args.run} step {ckpt.step}; trained with num_loops={train_loops}; {val.size:,} validation tokens")
    print(f"{'weights':<8} {'loops':>5} {'val_bpb':>8} {'seconds':>8}")
    for weights in ("ema", "model"):
        for loops in loop_counts:
            # eval_loops sizes the U-Net skip weights; rebuild with it set to the loop count scored.
            cfg = config_from_dict(TrainConfig, {**ckpt.config, "eval_loops": max(loops, ckpt.config["eval_loops"])})
            model = GPT(cfg.model_config())
            model.load_state_dict(_fit_skips(ckpt.tensors[weights], model))
            start = time.perf_counter()
            result = plain_validation(model, val, tables, cfg.train_seq_len, 64, ctx, loops)
            print(f"{weights:<8} {loops:>5} {result.bpb:>8.4f} {time.perf_counter() - start:>8.1f}")


def _fit_skips(tensors: dict[str, torch.Tensor], model: GPT) -> dict[str, torch.Tensor]:
    """Loop counts beyond the trained ones need more skip weights than were trained: pad with the
    initial value (1.0), which is what an untrained skip weight would hold."""
    tensors = dict(tensors)
    if model.skip_weights is not None and "skip_weights" in tensors:
        trained = tensors["skip_weights"]
        padded = torch.ones_like(model.skip_weights)
        padded[: trained.size(0)] = trained[: padded.size(0)]
        tensors["skip_weights"] = padded
    return tensors


if __name__ == "__main__":
    main()
