"""Stage `eval`: score a model or artifact on the validation split → `eval.json`.

Methods (window policies in golfctl/scoring.py): plain (non-overlapping windows of seq_len),
sliding (windows every `stride` tokens, each target scored exactly once) and, with `ttt`,
score-first test-time training (golfctl/ttt.py): each chunk is scored with the current weights
before the model trains on it; with `--ttt --ttt-mode phased`, the 2026-04-27 record's phased LoRA
test-time training instead (golfctl/phased_ttt.py: per-document adapters, global SGD phases; run
eagerly, never compiled). The weights come from the file for every run and nothing persists.
BPB follows docs/design.md ("BPB") with the dataset's tokenizer, whose byte count of the split
is checked against the manifest before any scoring.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from golfctl.attention import select_attention
from golfctl.compile import Compiler
from golfctl.config import COMPILE_BACKENDS
from golfctl.dataset import dataset_identity, open_dataset
from golfctl.distributed import DistContext, agree, on_main, run_distributed
from golfctl.errors import UserError, refuse_problems
from golfctl.fileio import atomic_write_bytes, sha256_file
from golfctl.model import ttt_parameters
from golfctl.outputs import JSON, check_output_file
from golfctl.progress import Progress, tee_stderr, utc_now
from golfctl.scoring import Scorer, Sums, Window, plain_windows, sliding_windows
from golfctl.packed import PackedConfig, packed_rows
from golfctl.phased_ttt import PhasedSums, PhasedTTTConfig, phased_ttt
from golfctl.shards import BOS_ID
from golfctl.ttt import ChunkedSums, TTTConfig, score_by_chunk, score_first_ttt, warm_up
from golfctl.validation import load_validation_set
from golfctl.weights import build_model, load_weights, refuse_non_finite

EVAL_FORMAT = "golfctl.eval"
EVAL_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    model: Path | None = field(default=None, metadata={"argument": True})
    data: Path | None = field(default=None, metadata={
        "help": "Dataset folder (its validation split); with --plan, or --max-val-tokens instead."})
    out: Path | None = field(default=None, metadata={"help": "Where to write eval.json (required unless --plan)."})
    seq_len: int = field(default=0, metadata={"help": "Window length [default: the model's train_seq_len]."})
    stride: int = field(default=64, metadata={"help": "Sliding-window step."})
    batch_seqs: int = field(default=32, metadata={"help": "Windows per forward."})
    plain: bool = field(default=True, metadata={"help": "Score plain non-overlapping windows."})
    sliding: bool = field(default=True, metadata={"help": "Score sliding windows."})
    ttt: bool = field(default=False, metadata={"help": "Also score with test-time training (--ttt-mode)."})
    ttt_mode: str = field(default="sliding", metadata={
        "choices": ("sliding", "phased"),
        "help": "What --ttt runs: sliding (score-first TTT on sliding windows, --ttt-* options) or phased (the "
                "2026-04-27 record's phased LoRA TTT, --phased-* options)."})
    ttt_config: TTTConfig = field(default_factory=TTTConfig, metadata={"prefix": "ttt"})
    phased_config: PhasedTTTConfig = field(default_factory=PhasedTTTConfig, metadata={"prefix": "phased"})
    packed: bool = field(default=False, metadata={
        "help": "Also score as the 04-27 record's eval_val (golfctl/packed.py): packed rows, attention inside "
                "documents, the record's rank ranges and truncation emulated."})
    packed_config: PackedConfig = field(default_factory=PackedConfig, metadata={"prefix": "packed"})
    compile: bool | None = field(default=None, metadata={
        "help": "torch.compile every forward, warmed up on random tokens [default: the model's `compile`]."})
    compile_backend: str | None = field(default=None, metadata={
        "choices": COMPILE_BACKENDS, "help": "Compile backend [default: the model's `compile_backend`]."})
    eval_loops: int = field(default=0, metadata={"help": "Loop count [default: the model's eval_loops]."})
    max_val_tokens: int = field(default=0, metadata={"help": "Score only the first N tokens (quick runs)."})
    tokenizer: Path | None = field(default=None, metadata={
        "help": "Tokenizer .model for datasets that carry none (official folders)."})
    plan: bool = field(default=False, metadata={
        "help": "Print the work and the estimated seconds on H100s (golfctl/plan.py); score nothing."})
    world_size: int = field(default=0, metadata={"help": "With --plan: ranks to plan for [default: this run's]."})
    preset: str | None = field(default=None, metadata={"help": "With --plan: plan a preset's model instead of MODEL."})
    rates: Path | None = field(default=None, metadata={
        "help": "With --plan: JSON from benchmarks/bench_gpu.py [default: rates calibrated from the 2026-04-09 "
                "record's log]."})

    def problems(self) -> list[str]:
        p = self._input_problems()
        p += [f"--{k.replace('_', '-')} must be >= 0, got {getattr(self, k)}"
             for k in ("seq_len", "eval_loops", "max_val_tokens", "world_size") if getattr(self, k) < 0]
        p += [f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
              for k in ("stride", "batch_seqs") if getattr(self, k) < 1]
        if self.ttt_mode != "sliding" and not self.ttt:
            p.append(f"--ttt-mode {self.ttt_mode} is what --ttt runs: add --ttt")
        return (p + (self.ttt_config.problems() if self.sliding_ttt else [])
                + (self.phased_config.problems() if self.phased_ttt else [])
                + (self.packed_config.problems() if self.packed else []))

    @property
    def sliding_ttt(self) -> bool:
        """Score-first TTT on sliding windows (golfctl/ttt.py): what a plain --ttt runs."""
        return self.ttt and self.ttt_mode == "sliding"

    @property
    def phased_ttt(self) -> bool:
        """Phased LoRA TTT (golfctl/phased_ttt.py)."""
        return self.ttt and self.ttt_mode == "phased"

    def _input_problems(self) -> list[str]:
        if not self.plan:
            given = {"--world-size": self.world_size, "--preset": self.preset, "--rates": self.rates}
            p = [f"{name} is only for --plan" for name, value in given.items() if value]
            return p + [f"{name} is required" for name, value in
                        (("MODEL", self.model), ("--data", self.data), ("--out", self.out)) if value is None]
        p = [] if (self.model is None) != (self.preset is None) else ["--plan needs MODEL or --preset (one of them)"]
        if self.data is None and not self.max_val_tokens:
            p.append("--plan needs --data or --max-val-tokens (the number of targets to plan for)")
        return p


def run_eval(cfg: EvalConfig) -> dict:
    refuse_problems(cfg.problems())
    if cfg.plan:
        raise UserError("--plan is stages.eval_plan.run_plan's (the CLI calls it): run_eval scores")
    check_output_file(cfg.out, JSON, inputs=(cfg.model, cfg.data, cfg.tokenizer))
    return run_distributed(lambda ctx: _logged(cfg, ctx))


def _evaluate(cfg: EvalConfig, ctx: DistContext) -> dict:
    weights = load_weights(cfg.model)
    config = weights.config
    seq_len, loops = eval_geometry(cfg, config)
    dataset = open_dataset(cfg.data)
    refuse_non_finite(weights)
    val = load_validation_set(dataset, cfg.tokenizer, config.vocab_size, 1, ctx.device,
                              model_tokenizer_sha256=weights.tokenizer_sha256)
    agree(ctx, "model, dataset or eval options", json.dumps(
        [weights.sha256, dataset_identity(dataset), _settings(cfg)], sort_keys=True))
    tokens = val.tokens[: cfg.max_val_tokens + 1] if cfg.max_val_tokens else val.tokens
    if seq_len > tokens.size - 1:
        raise UserError(f"--seq-len {seq_len:,} is longer than the {tokens.size - 1:,} validation targets scored; "
                        "pass a shorter --seq-len")
    ranges = _packed_ranges(tokens, seq_len, cfg.packed_config, config.doc_max_len) if cfg.packed else []
    model = build_model(weights, ctx.device)
    _check_loops(model, loops)
    ttt_params = _ttt_parameters(model, cfg) if cfg.sliding_ttt else []
    if cfg.phased_ttt and tokens[0] != BOS_ID:
        raise UserError("--ttt-mode phased scores whole documents from their BOS; this validation stream does not "
                        "start with one")
    _say(ctx, select_attention(ctx.device))
    compiler = Compiler(config.compile if cfg.compile is None else cfg.compile,
                        cfg.compile_backend or config.compile_backend)
    scorer = Scorer(compiler(model), val.tables, ctx, loops, cfg.batch_seqs, seq_len)
    row_scorer = replace(scorer, batch_seqs=1, seq_len=ranges[0][0].length) if ranges else None  # --packed's rows
    _warm_up(compiler, [scorer, row_scorer], model, cfg, ttt_params, config.vocab_size)
    _say(ctx, f"eval: {cfg.model} ({weights.origin}), {tokens.size - 1:,} targets, seq_len {seq_len}, "
              f"stride {cfg.stride}, loops {loops}, {ctx.world_size} rank(s)")
    results: dict[str, dict] = {}
    if cfg.plain:
        results["plain"] = _timed(ctx, "plain", tokens.size - 1, lambda progress: scorer.score(
            tokens, plain_windows(tokens.size, seq_len), progress))
    windows = sliding_windows(tokens.size, seq_len, cfg.stride) if cfg.sliding or cfg.sliding_ttt else []
    if cfg.sliding and cfg.sliding_ttt:  # per TTT chunk too, so that TTT's gain can be read chunk by chunk
        results["sliding"] = _timed(ctx, "sliding", tokens.size - 1, lambda progress: score_by_chunk(
            scorer, tokens, windows, cfg.ttt_config.chunk_tokens, progress))
    elif cfg.sliding:
        results["sliding"] = _timed(ctx, "sliding", tokens.size - 1,
                                    lambda progress: scorer.score(tokens, windows, progress))
    if cfg.sliding_ttt:
        with _weights_restored(model):  # nothing learned at test time persists
            results["ttt"] = _timed(ctx, "ttt", tokens.size - 1, lambda progress: score_first_ttt(
                scorer, tokens, windows, cfg.ttt_config, ttt_params, progress))
    if cfg.phased_ttt:
        with _weights_restored(model):
            results["phased"] = _timed(ctx, "phased", tokens.size - 1, lambda progress: phased_ttt(
                model, tokens, val.tables, ctx, loops, cfg.phased_config, progress))
    if ranges:
        results["packed"] = _timed(ctx, "packed", sum(w.n_scored for windows in ranges for w in windows),
                                   lambda progress: _score_packed(row_scorer, tokens, ranges, progress))
    if not cfg.max_val_tokens:
        _check_bytes(dataset.splits["val"].bytes, {k: v for k, v in results.items() if k != "packed"})
    report = {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "inputs": {"model_sha256": weights.sha256, "model_kind": weights.kind, "dataset": dataset_identity(dataset),
                   "tokenizer_sha256": sha256_file(val.tokenizer)},
        "settings": {**_settings(cfg), "seq_len": seq_len, "eval_loops": loops, "world_size": ctx.world_size,
                     "val_targets": int(tokens.size - 1), "compile": compiler.enabled,
                     "compile_backend": compiler.backend},
        "compile": compiler.stats(),
        "results": results,
    }
    on_main(ctx, lambda: atomic_write_bytes(cfg.out, (json.dumps(report, indent=2) + "\n").encode()),
            f"writing {cfg.out}")
    _say(ctx, f"eval: wrote {cfg.out}")
    return report


def eval_geometry(cfg: EvalConfig, config) -> tuple[int, int]:
    """(seq_len, loops) of this eval: the options, else the model's; checked against stride and chunk."""
    seq_len = cfg.seq_len or config.train_seq_len
    if (cfg.sliding or cfg.sliding_ttt) and cfg.stride > seq_len:  # only sliding windows (TTT's too) have a stride
        raise UserError(f"--stride {cfg.stride} must be between 1 and --seq-len {seq_len}")
    if cfg.sliding_ttt and cfg.ttt_config.chunk_tokens < seq_len:
        raise UserError(f"--ttt-chunk-tokens {cfg.ttt_config.chunk_tokens} must be at least --seq-len {seq_len}")
    return seq_len, cfg.eval_loops or config.resolved_eval_loops


def _settings(cfg: EvalConfig) -> dict:
    """The options as flat JSON values, a nested config's under its prefix (`ttt_lr`, `phased_lanes`, …),
    as the command line names them."""
    flat = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if "prefix" in f.metadata:
            flat |= {f"{f.metadata['prefix']}_{k}": v for k, v in asdict(value).items()}
        elif f.name not in ("plan", "preset", "rates"):
            flat[f.name] = value
    return {k: str(v) if isinstance(v, Path) else v for k, v in flat.items()}


def _check_loops(model, loops: int) -> None:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device), loops=loops)
    except ValueError as exc:
        raise UserError(f"--eval-loops {loops}: {exc}") from None


def _ttt_parameters(model, cfg: EvalConfig) -> list:
    try:
        return ttt_parameters(model, cfg.ttt_config.params)
    except ValueError as exc:
        raise UserError(f"--ttt-params: {exc}") from None


def _warm_up(compiler: Compiler, scorers: list[Scorer | None], model, cfg: EvalConfig, ttt_params: list,
             vocab: int) -> None:
    """Compile every graph this eval uses before any scoring (golfctl.ttt.warm_up: random tokens,
    the very calls that score; TTT's with the first scorer); the weights are restored after, so
    nothing of it remains."""
    if not compiler.enabled:
        return
    def run() -> None:
        for i, scorer in enumerate(scorers):
            if scorer is not None:
                warm_up(scorer, vocab, cfg.ttt_config if cfg.sliding_ttt and i == 0 else None, ttt_params)

    with _weights_restored(model):
        compiler.warm_up(run, scorers[0].ctx.device)
    _say(scorers[0].ctx, f"eval: compile warm-up done: {compiler.describe()}")


@contextlib.contextmanager
def _weights_restored(model) -> Iterator[None]:
    """The model's weights as they were on entry once the block ends, however it ends."""
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(original)


def _timed(ctx: DistContext, name: str, targets: int, run: Callable[[Progress | None], Sums]) -> dict:
    """Run one scoring method of `targets` targets with a progress line on rank 0 (tokens scored,
    tokens/s, ETA)."""
    progress = Progress(f"eval {name}", "tokens", total_items=targets) if ctx.is_main else None
    start = time.perf_counter()
    sums = run(progress)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress.close()
    entry = {"val_loss": sums.loss, "val_bpb": sums.bpb, "tokens": sums.tokens, "bytes": sums.bytes,
             "seconds": seconds}
    if isinstance(sums, ChunkedSums):
        entry["chunks"] = sums.chunks
    if isinstance(sums, PhasedSums):  # per document in stream order; per phase, the last after the last global SGD
        entry |= {"documents": sums.documents, "phases": sums.phases}
    if not math.isfinite(sums.loss):  # ranks agree: the sums are all-reduced
        hint = {"ttt": "lower --ttt-lr or --ttt-grad-clip", "phased": "lower --phased-lora-lr or --phased-global-lr"
                }.get(name, "check the weights with golfctl inspect")
        raise UserError(f"eval {name}: the loss is not finite ({sums.loss}); nothing was written; {hint}")
    _say(ctx, f"  {name:<8} val_loss {sums.loss:.4f}  val_bpb {sums.bpb:.4f}  {sums.tokens:,} tokens  "
              f"{seconds:.1f}s ({sums.tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return entry


def _packed_ranges(tokens, seq_len: int, cfg: PackedConfig, doc_max_len: int) -> list[list[Window]]:
    """--packed's rows per emulated rank (golfctl.packed), those with any; refused before any work."""
    if not doc_max_len:
        raise UserError("--packed scores rows of whole packed documents: it needs a model whose attention stays "
                        "inside documents (doc_max_len, e.g. --preset frontier)")
    if cfg.row_seqs(seq_len) < 1:
        raise UserError(f"--packed-batch-tokens {cfg.batch_tokens:,} gives no sequence of {seq_len:,} to each of "
                        f"--packed-world-size {cfg.world_size} ranks; raise it")
    ranges = [windows for windows in packed_rows(tokens.size, seq_len, cfg) if windows]
    if not ranges:
        raise UserError(f"the {tokens.size - 1:,} validation targets give no packed row of "
                        f"{cfg.row_seqs(seq_len) * seq_len:,} tokens to any emulated rank; lower "
                        "--packed-batch-tokens")
    return ranges


def _score_packed(row_scorer: Scorer, tokens, ranges: list[list[Window]], progress: Progress | None) -> Sums:
    """Each emulated rank's rows, as single windows shared by this run's ranks."""
    parts = [row_scorer.score_into(tokens, windows, None, progress) for windows in ranges]
    return Sums(sum(s.nll for s in parts), sum(s.tokens for s in parts), sum(s.bytes for s in parts))


def _check_bytes(expected: int | None, results: dict) -> None:
    """Every method scores every target once: its bytes must be the split's, as checked before scoring."""
    for name, entry in results.items():
        if expected is not None and entry["bytes"] != expected:
            raise RuntimeError(f"{name} scored {entry['bytes']} bytes, the validation text has {expected}")


def _say(ctx: DistContext, line: str) -> None:
    if ctx.is_main:
        print(line, file=sys.stderr, flush=True)


def eval_log_path(out: Path) -> Path:
    """Where eval appends everything it prints: beside the result, eval.json → eval.log."""
    out = Path(out)
    return out.with_name(out.name + ".log") if out.suffix == ".log" else out.with_suffix(".log")


def _logged(cfg: EvalConfig, ctx: DistContext) -> dict:
    """`_evaluate`, with rank 0's stderr (its lines, progress, an `Error:`) also appended to the log."""
    if not ctx.is_main:
        return _evaluate(cfg, ctx)
    with tee_stderr(eval_log_path(cfg.out), f"==== golfctl eval {utc_now()}: {cfg.model} on {cfg.data} → {cfg.out}"):
        return _evaluate(cfg, ctx)
