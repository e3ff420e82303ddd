"""Benchmark: the eval stage's scoring throughput on CPU, against a naive one-window-at-a-time loop.

On the first --max-val-tokens validation tokens of a trained model, at its train_seq_len and
eval loops, in one process on the CPU with one torch thread count throughout:

  plain      Scorer.score over plain_windows(n, seq_len): non-overlapping windows,
             batch_seqs per forward, as the eval stage does.
  sliding    Scorer.score over sliding_windows(n, seq_len, stride) (stride 64), batch_seqs
             windows per forward, as the eval stage does.
  reference  the same sliding windows scored one at a time: a full forward of each window
             alone (batch of 1), the nll of its scored tail summed in float64. It must give the
             batched sliding run's Σ nll within 1e-9 relative and its byte count exactly, or the
             script exits non-zero.
  ttt        score_first_ttt over the sliding windows with the eval stage's defaults (EvalConfig)
             except the chunk size, --ttt-chunk-tokens (default 8192, so a short stream still
             has chunks to train on). The weights are restored afterwards.

Scored tokens/s is targets scored / wall seconds; plain and sliding are the best of --repeats
runs, reference and ttt (the long ones) run once. Ratios: batched sliding and plain over the
reference (tokens/s), and the TTT cost as seconds(ttt) / seconds(sliding).

    .venv/bin/python benchmarks/bench_eval.py [--model artifacts/artifact.bin] [--data artifacts/data]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from golfctl.bpb import TorchByteTables
from golfctl.dataset import open_dataset
from golfctl.distributed import single_process
from golfctl.errors import UserError
from golfctl.model import ttt_parameters
from golfctl.provenance import device_name
from golfctl.scoring import Scorer, Sums, Window, plain_windows, sliding_windows
from golfctl.ttt import score_first_ttt
from golfctl.validation import load_validation_set
from golfctl.weights import build_model, load_weights
from stages.evaluate import EvalConfig

REL_TOL = 1e-9  # batched vs one-at-a-time Σ nll: float32 logits, float64 sums


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/artifact.bin"),
                        help="artifact, model file or checkpoint (default artifacts/artifact.bin)")
    parser.add_argument("--data", type=Path, default=Path("artifacts/data"),
                        help="dataset folder (default artifacts/data)")
    parser.add_argument("--max-val-tokens", type=int, default=20_000,
                        help="score the first N validation targets (default 20000; 0 = all)")
    parser.add_argument("--ttt-chunk-tokens", type=int, default=8192,
                        help="TTT chunk size (default 8192; the stage's is 32768)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of plain and sliding (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.repeats < 1 or args.max_val_tokens < 0 or args.threads < 0:
        parser.error("--repeats must be >= 1, --max-val-tokens and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run(args)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def run(args: argparse.Namespace) -> None:
    if not args.model.exists():
        raise UserError(f"{args.model} does not exist; run `make artifact` (or pass --model and --data)")
    device = torch.device("cpu")
    stage = EvalConfig(model=args.model, data=args.data, out=Path(os.devnull))  # its defaults; nothing is written
    weights = load_weights(args.model)
    cfg = weights.config
    seq_len, loops = cfg.train_seq_len, cfg.resolved_eval_loops
    val = load_validation_set(open_dataset(args.data), None, cfg.vocab_size, 1, device)
    tokens = val.tokens[: args.max_val_tokens + 1] if args.max_val_tokens else val.tokens
    model = build_model(weights, device)
    threads = torch.get_num_threads()

    print(f"\nmodel    {args.model}: {weights.origin}; {cfg.num_layers} layers × {cfg.model_dim}, "
          f"vocab {cfg.vocab_size}, seq_len {seq_len}, eval loops {loops}")
    print(f"device   {device_name(device)}, torch {torch.__version__}, "
          f"cpu count / torch threads {os.cpu_count()} / {threads}")
    print(f"stream   {tokens.size - 1:,} targets of {val.tokens.size - 1:,}; stride {stage.stride}, "
          f"batch_seqs {stage.batch_seqs}; plain and sliding best of {args.repeats}, reference and ttt once")

    plain_plan = plain_windows(tokens.size, seq_len)
    sliding_plan = sliding_windows(tokens.size, seq_len, stage.stride)
    scorer = Scorer(model, val.tables, single_process(device), loops, stage.batch_seqs, seq_len)
    ttt_config = dataclasses.replace(stage.ttt_config, chunk_tokens=args.ttt_chunk_tokens)
    rows = {}
    rows["plain"] = best_of(args.repeats, lambda: scorer.score(tokens, plain_plan))
    rows["sliding"] = best_of(args.repeats, lambda: scorer.score(tokens, sliding_plan))
    rows["reference"] = best_of(1, lambda: score_one_at_a_time(model, tokens, sliding_plan, val.tables, loops))
    rows["ttt"] = best_of(1, lambda: ttt(scorer, tokens, sliding_plan, ttt_config))
    check(torch.get_num_threads() == threads, f"torch threads changed from {threads} to {torch.get_num_threads()}")

    sliding, reference = rows["sliding"][0], rows["reference"][0]
    rel = abs(sliding.nll - reference.nll) / abs(reference.nll)
    check(sliding.tokens == reference.tokens and sliding.bytes == reference.bytes,
          f"reference scored {reference.tokens} tokens / {reference.bytes} bytes, "
          f"batched sliding {sliding.tokens} / {sliding.bytes}")
    check(rel <= REL_TOL, f"reference Σ nll {reference.nll!r} differs from batched sliding {sliding.nll!r} "
                          f"by {rel:.2e} relative (> {REL_TOL:g})")
    report(rows, len(plain_plan), len(sliding_plan), args.ttt_chunk_tokens, stage, rel)


def best_of(repeats: int, fn) -> tuple[Sums, float]:
    """(sums of the last call, best wall seconds over `repeats` calls)."""
    best, sums = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        sums = fn()
        best = min(best, time.perf_counter() - start)
    return sums, best


@torch.no_grad()
def score_one_at_a_time(model, tokens: np.ndarray, windows: list[Window], tables: TorchByteTables,
                        loops: int) -> Sums:
    """The naive loop: each window alone through the whole model, its scored tail summed."""
    model.eval()
    nll, n_tokens, n_bytes = 0.0, 0, 0
    for w in windows:
        row = torch.from_numpy(tokens[w.start: w.end + 1].astype(np.int64))[None]  # (1, T+1)
        x, y = row[:, :-1], row[:, 1:]  # (1, T) inputs and targets
        losses = model(x, y, loops=loops, reduction="none")  # (1, T) float32
        nll += losses[0, w.offset:].double().sum().item()
        n_bytes += int(tables.target_bytes(x, y)[0, w.offset:].sum())
        n_tokens += w.n_scored
    return Sums(nll, n_tokens, n_bytes)


def ttt(scorer: Scorer, tokens: np.ndarray, windows: list[Window], ttt_config) -> Sums:
    """score_first_ttt as the eval stage calls it, with its defaults but the chunk size; weights restored."""
    model = scorer.model
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        return score_first_ttt(scorer, tokens, windows, ttt_config, ttt_parameters(model, ttt_config.params))
    finally:
        model.load_state_dict(original)


def report(rows: dict[str, tuple[Sums, float]], n_plain: int, n_sliding: int, chunk_tokens: int,
           stage: EvalConfig, rel: float) -> None:
    rate = {name: sums.tokens / seconds for name, (sums, seconds) in rows.items()}  # scored tokens/s
    what = {
        "plain": f"{n_plain} windows, {stage.batch_seqs}/forward",
        "sliding": f"{n_sliding} windows, {stage.batch_seqs}/forward",
        "reference": f"{n_sliding} windows, 1/forward",
        "ttt": f"chunks of {chunk_tokens:,}, {stage.ttt_config.epochs} epochs, params {stage.ttt_config.params}",
    }
    print(f"\n  {'method':<10}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'/ ref':>8}{'val_bpb':>9}  setup")
    for name, (sums, seconds) in rows.items():
        print(f"  {name:<10}{sums.tokens:>8,}{seconds:>9.2f}{rate[name]:>10,.0f}"
              f"{rate[name] / rate['reference']:>7.2f}×{sums.bpb:>9.4f}  {what[name]}")
    print(f"\n  batched sliding / reference: {rate['sliding'] / rate['reference']:.2f}× tokens/s "
          f"(Σ nll equal to {rel:.1e} relative, bytes exact)")
    print(f"  plain / reference:           {rate['plain'] / rate['reference']:.2f}× tokens/s")
    print(f"  TTT cost:                    {rows['ttt'][1] / rows['sliding'][1]:.2f}× the seconds of batched sliding")


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"bench_eval: {what}")


if __name__ == "__main__":
    sys.exit(main())
