"""How long an eval takes on GPUs, from the work it does: `golfctl eval --plan`, without scoring.

Work is counted as the code does it, on the busiest rank and with its fixed shapes (a filler row
costs what a real one does):
- a scoring pass (plain or sliding): the rank's share of the windows, in forwards of
  `batch_seqs` rows of seq_len tokens;
- score-first TTT: each chunk's windows scored the same way, then, on every chunk but the last,
  `epochs` passes of training steps of `step_rows` rows (forward and backward);
- phased TTT (`phased_work`, golfctl/phased_ttt.py): per queue batch, per chunk, one forward of
  (documents, window) tokens, with a backward where the batch trains on that chunk, on the busiest
  rank of each stretch between phases (lanes → ranks as phased_ttt assigns them); then each
  phase's SGD over its documents' sequences, shared by the ranks. The adapters' own FLOPs are
  counted as a factor on the rows (`lora_factor`); work is given in rows of `seq_len` tokens.

Seconds = forward tokens × forward FLOPs per token / forward FLOP/s, plus the same for training
(3× the forward's FLOPs); FLOPs per token as `golfctl.model.model_flops_per_token` counts them.
The two rates per GPU come from `benchmarks/bench_gpu.py`'s JSON or, by default, from the
2026-04-09 record's own log: its sliding pass took 121.183 s and its TTT 368.074 s on 8 H100s,
for the work this module counts at its settings. Compile warm-up is not included (the record
compiled inside those times; bench_gpu.py measures it apart).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golfctl.config import ModelConfig, TrainConfig, resolve_config
from golfctl.errors import UserError
from golfctl.model import layer_sequence, model_flops_per_token
from golfctl.phased_ttt import (PhasedTTTConfig, batch_queue, chunk_width, document_chunks, global_sgd_documents,
                                phase_boundaries, phase_ends, sgd_chunk_sequences)
from golfctl.scoring import sliding_windows, windows_by_chunk
from golfctl.ttt import TTTConfig, chunk_sequences, step_rows

EVAL_BUDGET_SECONDS = 600.0


@dataclass(frozen=True)
class RecordEval:
    """The 2026-04-09 record's evaluation as its train_seed314.log shows it (8 × H100)."""

    val_targets: int = 40_540_160
    seq_len: int = 2048
    stride: int = 64
    batch_seqs: int = 32  # windows per forward, per rank
    world_size: int = 8
    sliding_seconds: float = 121.183  # quantized_sliding_window eval_time:121183ms
    ttt_seconds: float = 368.074  # quantized_ttt eval_time:368074ms
    ttt: TTTConfig = TTTConfig(chunk_tokens=32_768, lr=0.005, momentum=0.9, epochs=3, grad_clip=1.0,
                               batch_seqs=32)


@dataclass(frozen=True)
class PassWork:
    """One eval method's work on the busiest rank."""

    name: str
    windows: int
    forward_rows: int  # rows of seq_len tokens, forward only
    chunks: int = 0
    train_steps: int = 0
    train_rows: int = 0  # rows of seq_len tokens, forward and backward


@dataclass(frozen=True)
class Rates:
    """FLOP/s per GPU of scoring forwards and of training steps, and where they come from."""

    forward: float
    train: float
    source: str


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, loops: int) -> float:
    """A third of the training estimate `model_flops_per_token` (6·N + 12·L·d·T)."""
    return model_flops_per_token(cfg, seq_len, loops) / 3


def _rows(n_windows: int, batch_seqs: int, world_size: int) -> int:
    """Forward rows of the busiest rank for n windows: its share in batches of batch_seqs rows."""
    return math.ceil(math.ceil(n_windows / world_size) / batch_seqs) * batch_seqs


def scoring_work(name: str, n_tokens: int, seq_len: int, stride: int, batch_seqs: int, world_size: int) -> PassWork:
    n = len(sliding_windows(n_tokens, seq_len, stride))
    return PassWork(name, n, _rows(n, batch_seqs, world_size))


def ttt_work(n_tokens: int, seq_len: int, stride: int, batch_seqs: int, cfg: TTTConfig, world_size: int) -> PassWork:
    windows = sliding_windows(n_tokens, seq_len, stride)
    chunks = windows_by_chunk(windows, cfg.chunk_tokens)
    forward = sum(_rows(len(chunk), batch_seqs, world_size) for chunk in chunks if chunk)
    steps = sum(math.ceil(len(chunk_sequences(i, cfg.chunk_tokens, windows[-1].end, seq_len)) / cfg.batch_seqs)
                for i in range(len(chunks) - 1)) * cfg.epochs
    return PassWork("ttt", len(windows), forward, len(chunks), steps, steps * step_rows(cfg, seq_len, world_size))


def lora_factor(cfg: ModelConfig, loops: int, phased: PhasedTTTConfig) -> float:
    """(model + adapters) / model forward FLOPs per token: each adapter (in → rank → out) costs
    2·rank·(in + out); q, v and the head always, k, attention output and MLP as `phased.lora` says,
    once per block application."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    extra = set(phased.lora.split(","))
    per_application = (d + d) + (d + kv) + ("k" in extra) * (d + kv) + ("o" in extra) * (d + d) + ("mlp" in extra) * (d + d)
    adapters = 2 * phased.lora_rank * (len(layer_sequence(cfg, loops)) * per_application + d + cfg.vocab_size)
    model = model_flops_per_token(cfg, phased.seq_len, loops) / 3
    return (model + adapters) / model


def phased_work(doc_lengths: list[int], cfg: PhasedTTTConfig, world_size: int, factor: float,
                row_len: int) -> tuple[PassWork, PassWork]:
    """Phased TTT's work on the busiest rank (module docstring) in rows of `row_len` tokens: the
    adapter passes ("phased": `windows` counts documents, `chunks` queue batches) and the phases'
    SGD ("phase SGD")."""
    queue = batch_queue(doc_lengths, cfg.batch_docs)
    boundaries = phase_boundaries(len(doc_lengths), cfg)
    ends = phase_ends(queue, boundaries)
    forward = train = steps = 0
    start = 0
    for end in [*ends, len(queue) - 1]:  # one stretch of the queue per phase, the last after the last phase
        per_rank = [[0, 0, 0] for _ in range(world_size)]  # forward-only tokens, trained tokens, steps
        for batch in queue[start:end + 1]:
            work = per_rank[(batch.queue_index % cfg.lanes) % world_size]
            chunks = [document_chunks(doc_lengths[d], cfg.chunk_tokens) for d in batch.docs]
            for c in range(max(chunks)):
                trains = any(c < n - 1 for n in chunks)
                work[1 if trains else 0] += len(batch.docs) * chunk_width(c, cfg)
                work[2] += trains * cfg.grad_steps
        busiest = max(per_rank, key=lambda w: w[0] + 3 * w[1])
        forward, train, steps = forward + busiest[0], train + busiest[1], steps + busiest[2]
        start = end + 1
    sgd_tokens = sgd_steps = 0
    for boundary, end in zip(boundaries, ends):  # each phase's SGD on the documents scored so far
        tokens = sum(doc_lengths[d] for d in global_sgd_documents(queue, end, boundary))
        for chunk_seqs in sgd_chunk_sequences(tokens - 1, cfg):
            seqs = _ceil_div(chunk_seqs, world_size)
            sgd_tokens += cfg.global_epochs * seqs * cfg.global_seq_len
            sgd_steps += cfg.global_epochs * _ceil_div(seqs, cfg.global_batch_seqs)
    adapters = PassWork("phased", len(doc_lengths), _ceil_div(math.ceil(forward * factor), row_len), len(queue), steps,
                        _ceil_div(math.ceil(train * factor), row_len))
    return adapters, PassWork("phase SGD", 0, 0, len(ends), sgd_steps, _ceil_div(sgd_tokens, row_len))


@dataclass(frozen=True)
class RecordPhasedEval:
    """The 2026-04-27 record's phased TTT as its train_seed42.log shows it (8 × H100)."""

    documents: int = 50_000  # ttt_phased: total_docs:50000
    val_tokens: int = 47_851_520  # val_tokens
    world_size: int = 8
    seconds: float = 508.785  # quantized_ttt_phased eval_time:508785ms
    phase_seconds: tuple[float, ...] = (16.6, 29.8, 38.0)  # ttpp → ttpr of phases 1–3 (t:209.3→225.9, …)
    warmup_seconds: float = 137.6  # ttt_lora:compile warmup done (137.6s), on random tokens before the timer


def record_document_lengths(record: RecordPhasedEval = RecordPhasedEval()) -> list[int]:
    """The record's validation document lengths, rebuilt from the batches its logs print
    (presets/record_0427_ttt_batches.txt: 213 of 782 batches' shortest and longest document):
    each batch's 64 lengths spread evenly between its two, unlogged batches interpolated, all
    scaled to the logged token count."""
    rows = [line.split() for line in (Path(__file__).parent / "presets" / "record_0427_ttt_batches.txt")
            .read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    logged, shortest, longest = (np.array([int(r[i]) for r in rows]) for i in range(3))
    batches = _ceil_div(record.documents, 64)
    index = np.arange(1, batches + 1)
    lows, highs = np.interp(index, logged, shortest), np.interp(index, logged, longest)
    sizes = [64] * (batches - 1) + [record.documents - 64 * (batches - 1)]
    lengths = np.concatenate([np.linspace(lo, hi, n) for lo, hi, n in zip(lows, highs, sizes)])
    return np.maximum(2, np.round(lengths * record.val_tokens / lengths.sum())).astype(int).tolist()


@functools.cache
def phased_rates(record: RecordPhasedEval = RecordPhasedEval()) -> tuple[Rates, Rates]:
    """Per-GPU rates (adapter passes, phase SGD) that give the record's logged seconds for the
    work counted here at its settings (PhasedTTTConfig's defaults, 8 lanes as its 8 GPUs)."""
    cfg = resolve_config(TrainConfig, "frontier")
    loops, phased = cfg.resolved_eval_loops, PhasedTTTConfig()
    flops = forward_flops_per_token(cfg, phased.seq_len, loops)
    adapters, sgd = phased_work(record_document_lengths(record), phased, record.world_size,
                                lora_factor(cfg, loops, phased), phased.seq_len)
    source = (f"calibrated from the 2026-04-27 record's log (phased TTT {record.seconds:.1f} s, of which "
              f"phase SGD {sum(record.phase_seconds):.1f} s, on {record.world_size} × H100)")
    adapter_rate = (adapters.forward_rows + 3 * adapters.train_rows) * phased.seq_len * flops / (
        record.seconds - sum(record.phase_seconds))
    sgd_rate = 3 * sgd.train_rows * phased.seq_len * flops / sum(record.phase_seconds)
    return Rates(adapter_rate, adapter_rate, source), Rates(sgd_rate, sgd_rate, source)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def seconds(work: PassWork, seq_len: int, flops_per_token: float, rates: Rates) -> float:
    return (work.forward_rows * seq_len * flops_per_token / rates.forward
            + work.train_rows * seq_len * 3 * flops_per_token / rates.train)


def rates_from_timings(sliding: PassWork, sliding_seconds: float, ttt: PassWork, ttt_seconds: float, seq_len: int,
                       flops_per_token: float, source: str) -> Rates:
    """Per-GPU rates that give these sliding and TTT seconds for this work: the sliding pass sets
    the forward rate; TTT's time less its scoring forwards at that rate sets the training rate."""
    forward = sliding.forward_rows * seq_len * flops_per_token / sliding_seconds
    train_seconds = ttt_seconds - ttt.forward_rows * seq_len * flops_per_token / forward
    if train_seconds <= 0:
        raise ValueError(f"TTT took {ttt_seconds:.1f} s, no more than its scoring forwards alone: no training rate")
    return Rates(forward, ttt.train_rows * seq_len * 3 * flops_per_token / train_seconds, source)


@functools.cache
def record_rates(record: RecordEval = RecordEval()) -> Rates:
    """Rates that give the record's logged sliding and TTT seconds for the work counted here."""
    cfg = resolve_config(TrainConfig, "record")
    n_tokens = record.val_targets + 1
    return rates_from_timings(
        scoring_work("sliding", n_tokens, record.seq_len, record.stride, record.batch_seqs, record.world_size),
        record.sliding_seconds,
        ttt_work(n_tokens, record.seq_len, record.stride, record.batch_seqs, record.ttt, record.world_size),
        record.ttt_seconds, record.seq_len, forward_flops_per_token(cfg, record.seq_len, cfg.resolved_eval_loops),
        f"calibrated from the 2026-04-09 record's log (sliding {record.sliding_seconds:.1f} s, "
        f"TTT {record.ttt_seconds:.1f} s on {record.world_size} × H100)")


def measured_rates(path: Path) -> Rates:
    """Rates from the JSON that benchmarks/bench_gpu.py writes."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rates = Rates(float(data["forward_flops_per_s"]), float(data["train_flops_per_s"]),
                      f"measured by bench_gpu.py on {data['device']} ({path})")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--rates {path}: not a gpu_rates.json of benchmarks/bench_gpu.py ({exc}); "
                        "run the benchmark or drop --rates") from None
    if not (math.isfinite(rates.forward) and math.isfinite(rates.train) and rates.forward > 0 and rates.train > 0):
        raise UserError(f"--rates {path}: the rates must be positive numbers, got {rates.forward}, {rates.train}")
    return rates


def plan_lines(works: list[PassWork], seq_len: int, flops_per_token: float, rates: Rates) -> list[str]:
    """The plan as printed: per method the work and estimated seconds, the total, and a warning past 600 s."""
    lines = [f"  model: {flops_per_token / 1e9:.3f} GFLOP per forward token at seq_len {seq_len} (training 3×)",
             f"  rates per GPU: forward {rates.forward / 1e12:.1f} TFLOP/s, training {rates.train / 1e12:.1f} TFLOP/s, "
             f"{rates.source}"]
    total = 0.0
    for work in works:
        estimate = seconds(work, seq_len, flops_per_token, rates)
        total += estimate
        detail = f"{work.windows:,} windows, forward {work.forward_rows * seq_len:,} tokens/rank"
        if work.name == "phased":
            detail = (f"{work.windows:,} documents in {work.chunks:,} batches, forward {work.forward_rows * seq_len:,} "
                      f"and forward+backward {work.train_rows * seq_len:,} token-equivalents/rank (adapters "
                      f"included), {work.train_steps:,} steps")
        elif work.chunks:
            detail += (f"; {work.chunks:,} chunks, {work.train_steps:,} training steps, forward+backward "
                       f"{work.train_rows * seq_len:,} tokens/rank")
        lines.append(f"  {work.name:<8} {detail}: est. {estimate:,.1f} s")
    lines.append(f"  total    est. {total:,.1f} s of the {EVAL_BUDGET_SECONDS:.0f} s evaluation budget "
                 "(compile warm-up not included)")
    if total > EVAL_BUDGET_SECONDS:
        lines.append(f"warning: the estimate {total:,.0f} s passes the {EVAL_BUDGET_SECONDS:.0f} s evaluation "
                     "budget; drop a method (--no-plain), or lower --ttt-epochs, or raise --stride")
    return lines
