"""Benchmark: the CUDA path end to end on one device, for the day a GPU is lent.

    .venv/bin/python benchmarks/bench_gpu.py --data DATA [--tokenizer T.model] [--preset record] [--steps 60]

Runs the real stages as a user does, each in its own process: `golfctl train` (compile on, the
warm-up before the clock) for --steps steps, `golfctl ema-finalize`, then `golfctl eval --ttt`
on the first --val-tokens validation tokens at the preset's eval shapes (seq_len, stride 64,
batch 32, TTT chunks of --ttt-chunk-tokens, the record's 32,768). It prints

- training: tokens/s per device, peak memory, compile warm-up seconds, graphs, and graphs
  compiled after the warm-up (must be 0);
- eval: sliding and TTT tokens/s, compile warm-up seconds and graphs, recompiles;
- projections for 8 devices: training steps in the preset's clock (max_wallclock_seconds less
  the GPTQ reserve, assuming linear scaling over ranks: the gradient all-reduce is not
  measured here), and the eval seconds of `golfctl eval --plan` at the record's settings with
  the rates measured here;

and writes OUT/gpu_rates.json, which `golfctl eval --plan --rates` reads. Without a GPU the
same script runs on CPU with the tiny preset (`--preset tiny`, the default there), so it is
tested; its figures then say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from golfctl.config import TrainConfig, resolve_config
from golfctl.plan import RecordEval, forward_flops_per_token, plan_lines, rates_from_timings, scoring_work, ttt_work
from golfctl.provenance import device_name
from golfctl.ttt import TTTConfig

STRIDE, BATCH_SEQS = 64, 32


def main() -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (official sp8192 for record)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer .model for official folders")
    parser.add_argument("--preset", default="record" if cuda else "tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=60 if cuda else 20)
    parser.add_argument("--val-tokens", type=int, default=2_097_152 if cuda else 65_536)
    parser.add_argument("--ttt-chunk-tokens", type=int, default=RecordEval().ttt.chunk_tokens)
    parser.add_argument("--compile-backend", default="inductor", help="aot_eager: seconds to compile (CPU tests)")
    parser.add_argument("--out", type=Path, help="keep the run, eval.json and gpu_rates.json here [default: a temp dir]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        return bench(args, out)


def bench(args: argparse.Namespace, out: Path) -> int:
    sets = [*args.overrides, f"iterations={args.steps}", "max_wallclock_seconds=0", "gptq_reserve_seconds=0",
            "val_every=0", "checkpoint_every=0", f"log_every={max(1, args.steps // 10)}", "compile=true",
            f"compile_backend={args.compile_backend}"]
    cfg = resolve_config(TrainConfig, args.preset, None, tuple(sets))
    clock = resolve_config(TrainConfig, args.preset, None, tuple(args.overrides)).train_seconds
    tokenizer = ["--tokenizer", str(args.tokenizer)] if args.tokenizer else []
    run = out / "run"
    golfctl("train", "--data", str(args.data), *tokenizer, "--preset", args.preset, "--out", str(run),
            *[item for s in sets for item in ("--set", s)])
    golfctl("ema-finalize", str(run / "ckpt.safetensors"), "--out", str(out / "final.safetensors"))
    golfctl("eval", str(out / "final.safetensors"), "--data", str(args.data), *tokenizer, "--out",
            str(out / "eval.json"), "--no-plain", "--ttt", "--max-val-tokens", str(args.val_tokens),
            "--stride", str(STRIDE), "--batch-seqs", str(BATCH_SEQS), "--ttt-chunk-tokens", str(args.ttt_chunk_tokens),
            "--compile")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((out / "eval.json").read_text())

    train_rows = [m for m in metrics if m["kind"] == "train" and m["step"] > 1]  # step 1 pays first-call costs
    end = next(m for m in metrics if m["kind"] == "end")
    tokens_per_s = statistics.median(m["tokens_per_s"] for m in train_rows)
    device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"bench_gpu: preset {args.preset}, {device}, {args.steps} steps, compile backend {args.compile_backend}")
    print(f"train: {tokens_per_s:,.0f} tokens/s per device (median of logged intervals), peak memory "
          f"{end['peak_memory_bytes'] / 2**30:.2f} GiB, compile warm-up {end['warmup_seconds']:.1f} s, "
          f"{end['warmup_graphs']} graphs, {end['recompiles']} recompiles after warm-up")
    step_seconds_8 = cfg.train_batch_tokens / (8 * tokens_per_s)
    if clock:
        print(f"  projected on 8 devices: {clock / step_seconds_8:,.0f} steps in the {clock:.0f} s training clock "
              f"({step_seconds_8 * 1000:.0f} ms a step, linear scaling assumed)")

    seq_len, loops = report["settings"]["seq_len"], report["settings"]["eval_loops"]
    results, stats = report["results"], report["compile"]
    for name in ("sliding", "ttt"):
        r = results[name]
        print(f"eval {name}: {r['tokens'] / r['seconds']:,.0f} scored tokens/s in {r['seconds']:.1f} s, "
              f"val_bpb {r['val_bpb']:.4f}")
    print(f"eval compile: {stats['warmup_graphs']} graphs in {stats['warmup_seconds']:.1f} s, "
          f"{stats['recompiles']} recompiles after warm-up")

    n_tokens = report["settings"]["val_targets"] + 1
    ttt = TTTConfig(**{k.removeprefix("ttt_"): v for k, v in report["settings"].items() if k.startswith("ttt_")})
    flops = forward_flops_per_token(cfg, seq_len, loops)
    rates = rates_from_timings(scoring_work("sliding", n_tokens, seq_len, STRIDE, BATCH_SEQS, 1),
                               results["sliding"]["seconds"], ttt_work(n_tokens, seq_len, STRIDE, BATCH_SEQS, ttt, 1),
                               results["ttt"]["seconds"], seq_len, flops, f"measured by bench_gpu.py on {device}")
    rates_path = out / "gpu_rates.json"
    rates_path.write_text(json.dumps({"device": device, "preset": args.preset, "forward_flops_per_s": rates.forward,
                                      "train_flops_per_s": rates.train}, indent=2) + "\n")
    record = RecordEval()
    record_cfg = resolve_config(TrainConfig, "record")
    record_flops = forward_flops_per_token(record_cfg, record.seq_len, record_cfg.resolved_eval_loops)
    record_tokens = record.val_targets + 1
    works = [scoring_work("sliding", record_tokens, record.seq_len, record.stride, record.batch_seqs, 8),
             ttt_work(record_tokens, record.seq_len, record.stride, record.batch_seqs, record.ttt, 8)]
    print("projected eval of the record model at its settings on 8 devices at these rates:")
    print("\n".join(plan_lines(works, record.seq_len, record_flops, rates)))
    print(f"wrote {rates_path} (golfctl eval --plan --rates {rates_path})")
    return 0 if end["recompiles"] == 0 and stats["recompiles"] == 0 else 1


def golfctl(*argv: str) -> None:
    """One stage as its own process, as a user runs it; its output goes to this one's."""
    subprocess.run([sys.executable, "-m", "golfctl", *argv], check=True)


if __name__ == "__main__":
    sys.exit(main())
