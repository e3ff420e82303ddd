"""Benchmark: training throughput of a preset as model-FLOPs utilisation (MFU).

Builds the model, optimisers and loader exactly as `stages/train.py` does and runs its step
(micro-batches, scaled backward, schedule, clip, optimiser step, zero_grad, EMA) with each
part timed on its own. The step always runs `loops = num_loops`, the looped phase that follows
`enable_looping_at` and costs the most; the unlooped warm-up phase of a real run is cheaper.

  data       building the step's micro-batches (`list(micro_batches(step, device))`)
  forward    the forward of every micro-batch, loss included
  backward   `(loss / accum).backward()` of every micro-batch
  optimizer  set_schedule, clip, optimizer step, zero_grad and the EMA update (one process,
             so there is no gradient averaging)

Achieved model FLOP/s = model_flops_per_token(cfg, seq_len, loops) × tokens per step / mean
step time. The reference is the best FLOP/s (2·n³ per product) of an n×n @ n×n matrix product
timed in the same process with the same torch thread count, so MFU here means "fraction of
what this machine's matmul reaches", not of a datasheet peak. Other work on the same cores
inflates every step time: a large sd, or a median well above the min, is the sign of it.

On CPU everything is float32. On CUDA the forward runs under bf16 autocast (as in training)
and the reference is a bf16 matmul; timings are bracketed by torch.cuda.synchronize(). The
model is not torch.compile'd, unlike the train stage on CUDA, so a CUDA figure is an eager one.

The dataset is the Shakespeare corpus (vocab 1024), tokenized into a temporary folder
(untimed), unless `--data DIR` names an existing dataset folder.

    .venv/bin/python benchmarks/bench_train.py [--preset tiny] [--set key=value ...] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from golfctl.config import TrainConfig, resolve_config
from golfctl.dataset import open_dataset
from golfctl.ema import EMA
from golfctl.errors import UserError
from golfctl.loader import TrainBatches
from golfctl.model import GPT, model_flops_per_token, parameter_groups
from golfctl.optim import build_optimizers, lr_multiplier
from golfctl.provenance import device_name
from golfctl.precision import autocast
from stages.tokenize import TokenizeConfig, run_tokenize

PARTS = ("data", "forward", "backward", "optimizer")
MATMUL_REPEATS = 5
MATMUL_N = {"cpu": 2048, "cuda": 8192}  # big enough to reach the matmul plateau on each


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="config preset (default tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set train_batch_tokens=8192)")
    parser.add_argument("--data", type=Path, help="existing dataset folder (default: tokenize Shakespeare to a temp dir)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        cfg = resolve_config(TrainConfig, args.preset, None, tuple(args.overrides))
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if args.data:
            timings, n_params = time_steps(cfg, args.data, device, args.warmup, args.steps)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
                data = Path(tmp) / "data"
                run_tokenize(TokenizeConfig(out=data, corpus="shakespeare", vocab_size=cfg.vocab_size))
                timings, n_params = time_steps(cfg, data, device, args.warmup, args.steps)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    matmul_n = MATMUL_N[device.type]
    matmul_flops = matmul_flop_rate(matmul_n, device)
    report(cfg, device, n_params, timings, matmul_n, matmul_flops)
    return 0


def time_steps(cfg: TrainConfig, data: Path, device: torch.device, warmup: int,
               steps: int) -> tuple[list[dict[str, float]], int]:
    """Run `warmup` untimed then `steps` timed training steps; per step, seconds per part and "step"."""
    dataset = open_dataset(data)
    if dataset.vocab_size is not None and dataset.vocab_size != cfg.vocab_size:
        raise UserError(f"{data} has vocab {dataset.vocab_size}, the config {cfg.vocab_size}; "
                        f"pass --set vocab_size={dataset.vocab_size}")
    batches = TrainBatches(dataset.splits["train"], cfg.train_batch_tokens, cfg.train_seq_len, cfg.grad_accum,
                           cfg.seed, rank=0, world_size=1)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model_config()).to(device)
    optimizers = build_optimizers(parameter_groups(model), cfg, device)
    ema = EMA(model)
    loops = cfg.num_loops
    scale = 1.0 / batches.local_micro_batches

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    timings = []
    for step in range(warmup + steps):
        t = {part: 0.0 for part in PARTS}
        start = mark = sync()
        micro = list(batches.micro_batches(step, device))
        now = sync()
        t["data"], mark = now - mark, now
        for x, y in micro:
            with autocast(device):
                loss = model(x, y, loops=loops)
            now = sync()
            t["forward"] += now - mark
            (loss * scale).backward()
            mark = sync()
            t["backward"] += mark - now
        # The schedule only sets learning rates: progress = step / iterations is as good as any.
        optimizers.set_schedule(lr_multiplier(step, step / cfg.iterations, cfg), step)
        optimizers.clip_grad_norm_(cfg.grad_clip_norm)
        optimizers.step()
        optimizers.zero_grad()
        ema.update(model, cfg.ema_decay)
        end = sync()
        t["optimizer"] = end - mark
        t["step"] = end - start
        if step >= warmup:
            timings.append(t)
    if not torch.isfinite(loss.detach()).item():
        raise SystemExit(f"loss is {loss.item()} after {warmup + steps} steps; the timed work is not training")
    return timings, sum(p.numel() for p in model.parameters())


def matmul_flop_rate(n: int, device: torch.device) -> float:
    """Best FLOP/s of an (n, n) @ (n, n) product over MATMUL_REPEATS runs: fp32 on CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up: thread pool / cuBLAS handles
    best = float("inf")
    for _ in range(MATMUL_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


def report(cfg: TrainConfig, device: torch.device, n_params: int, timings: list[dict[str, float]],
           matmul_n: int, matmul_flops: float) -> None:
    loops = cfg.num_loops
    tokens = cfg.train_batch_tokens  # one process runs the whole global batch
    step_s = [t["step"] for t in timings]
    mean_s = statistics.fmean(step_s)
    spread = statistics.stdev(step_s) if len(step_s) > 1 else 0.0
    flops_per_token = model_flops_per_token(cfg, cfg.train_seq_len, loops)
    achieved = flops_per_token * tokens / mean_s
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    rows = [
        ("device", f"{device_name(device)}, {dtype}, torch {torch.__version__}"),
        ("cpu count / torch threads", f"{os.cpu_count()} / {torch.get_num_threads()}"),
        ("parameters", f"{n_params:,}"),
        ("loops (num_loops)", f"{loops}"),
        ("tokens / step", f"{tokens:,} ({cfg.grad_accum} × {tokens // cfg.grad_accum // cfg.train_seq_len}"
                          f" × {cfg.train_seq_len})"),
        ("model FLOPs / token", f"{flops_per_token / 1e6:,.2f} M"),
        ("step time", f"{mean_s * 1e3:,.1f} ms ± {spread * 1e3:,.1f} (mean ± sd of {len(step_s)}); "
                      f"median {statistics.median(step_s) * 1e3:,.1f}, min {min(step_s) * 1e3:,.1f}"),
        ("tokens / s", f"{tokens / mean_s:,.0f}"),
        ("achieved model GFLOP/s", f"{achieved / 1e9:,.2f}"),
        (f"matmul GFLOP/s ({matmul_n}², {'bf16' if device.type == 'cuda' else 'fp32'})", f"{matmul_flops / 1e9:,.2f}"),
        ("MFU (achieved / matmul)", f"{achieved / matmul_flops:.1%}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("\nstep time split:")
    for part in PARTS:
        part_s = statistics.fmean(t[part] for t in timings)
        print(f"  {part:<10} {part_s * 1e3:>9,.1f} ms  {part_s / mean_s:>6.1%}")


if __name__ == "__main__":
    sys.exit(main())
