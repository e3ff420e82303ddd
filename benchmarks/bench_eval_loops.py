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

from golfctl.checkpoint import load_checkpoint
from golfctl.config import TrainConfig, config_from_dict
from golfctl.dataset import open_dataset
from golfctl.distributed import single_process
from golfctl.model import GPT
from golfctl.scoring import score_plain
from golfctl.validation import load_validation_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("artifacts/run"))
    parser.add_argument("--data", type=Path, default=Path("artifacts/data"))
    args = parser.parse_args()

    ckpt = load_checkpoint(args.run / "ckpt.safetensors")
    ctx = single_process(torch.device("cpu"))
    cfg = config_from_dict(TrainConfig, ckpt.config)
    val = load_validation_set(open_dataset(args.data), None, cfg.vocab_size, 1, ctx.device)
    train_loops = ckpt.config["num_loops"]
    loop_counts = sorted({1, train_loops, 2 * train_loops, 3 * train_loops})
    print(f"run {args.run} step {ckpt.step}; trained with num_loops={train_loops}; {val.tokens.size:,} validation "
          "tokens")
    print(f"{'weights':<8} {'loops':>5} {'val_bpb':>8} {'seconds':>8}")
    for weights in ("ema", "model"):
        for loops in loop_counts:
            model = GPT(cfg.model_config())  # parameter shapes do not depend on the loop count scored
            model.load_state_dict(ckpt.tensors[weights])
            start = time.perf_counter()
            result = score_plain(model, val.tokens, val.tables, cfg.train_seq_len, ctx, loops)
            print(f"{weights:<8} {loops:>5} {result.bpb:>8.4f} {time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
