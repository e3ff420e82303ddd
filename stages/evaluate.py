"""Stage `eval`: score a model or artifact on the validation split → `eval.json`.

Methods: plain (non-overlapping windows of seq_len), sliding (windows every `stride` tokens,
each target scored exactly once) and, with `ttt`, score-first test-time training: each chunk
is scored with the current weights before the model trains on it. The weights come from the
file for every run and nothing persists. BPB follows DESIGN.md with the dataset's tokenizer;
over the whole split the bytes scored must equal the manifest's count of the decoded text.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from golfctl.dataset import dataset_identity, open_dataset
from golfctl.distributed import DistContext, init_distributed, shutdown
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes, sha256_file
from golfctl.model import parameter_roles
from golfctl.progress import Progress
from golfctl.sliding import Sums, plan_windows, score_first_ttt, score_windows
from golfctl.validation import autocast, load_validation_set
from golfctl.weights import build_model, load_weights

EVAL_FORMAT = "golfctl.eval"
EVAL_VERSION = 1
TTT_PARAM_SETS = ("all", "mlp", "attn", "scalar", "embed")


@dataclass(frozen=True)
class EvalConfig:
    model: Path
    data: Path
    out: Path
    seq_len: int = 0  # 0 = the model's train_seq_len
    stride: int = 64
    batch_seqs: int = 32  # windows per forward
    plain: bool = True
    sliding: bool = True
    ttt: bool = False
    ttt_chunk_tokens: int = 32_768
    ttt_lr: float = 0.005
    ttt_momentum: float = 0.9
    ttt_epochs: int = 3
    ttt_grad_clip: float = 1.0
    ttt_params: str = "all"  # comma-separated subset of TTT_PARAM_SETS
    ttt_batch_seqs: int = 32  # training sequences per TTT step, over all ranks
    eval_loops: int = 0  # 0 = the model's eval_loops
    max_val_tokens: int = 0  # score only the first N validation tokens (quick runs); 0 = all
    tokenizer: Path | None = None


def run_eval(cfg: EvalConfig) -> dict:
    ctx = init_distributed()
    try:
        result = _evaluate(cfg, ctx)
    except BaseException:
        shutdown(ctx, meet=False)
        raise
    shutdown(ctx)
    return result


def _evaluate(cfg: EvalConfig, ctx: DistContext) -> dict:
    weights = load_weights(cfg.model)
    config = weights.config
    seq_len = cfg.seq_len or config.train_seq_len
    loops = cfg.eval_loops or config.resolved_eval_loops
    if not 1 <= cfg.stride <= seq_len:
        raise UserError(f"--stride {cfg.stride} must be between 1 and --seq-len {seq_len}")
    dataset = open_dataset(cfg.data)
    val = load_validation_set(dataset, cfg.tokenizer, config.vocab_size, 1, ctx.device)
    tokens = val.tokens[: cfg.max_val_tokens + 1] if cfg.max_val_tokens else val.tokens
    model = build_model(weights, ctx.device)
    _check_loops(model, loops)
    scorer = _compiled(model, ctx, seq_len, loops, config.vocab_size, cfg)
    _say(ctx, f"eval: {cfg.model} ({weights.origin}), {tokens.size - 1:,} targets, seq_len {seq_len}, "
              f"stride {cfg.stride}, loops {loops}, {ctx.world_size} rank(s)")
    results: dict[str, dict] = {}
    methods = [("plain", seq_len), ("sliding", cfg.stride)]
    for name, stride in methods:
        if getattr(cfg, name):
            results[name] = _timed(ctx, name, tokens, lambda progress, s=stride: score_windows(
                scorer, tokens, plan_windows(tokens.size, seq_len, s), val.tables, ctx, loops, cfg.batch_seqs,
                progress=progress))
    if cfg.ttt:
        results["ttt"] = _ttt(cfg, model, scorer, tokens, val, ctx, seq_len, loops)
    if not cfg.max_val_tokens:
        _check_bytes(dataset, results)
    report = {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "inputs": {"model_sha256": weights.sha256, "model_kind": weights.kind, "dataset": dataset_identity(dataset),
                   "tokenizer_sha256": sha256_file(cfg.tokenizer or dataset.tokenizer_path)},
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                     "seq_len": seq_len, "eval_loops": loops, "world_size": ctx.world_size,
                     "val_targets": int(tokens.size - 1)},
        "results": results,
    }
    if ctx.is_main:
        atomic_write_bytes(cfg.out, (json.dumps(report, indent=2) + "\n").encode())
        _say(ctx, f"eval: wrote {cfg.out}")
    return report


def _check_loops(model, loops: int) -> None:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device), loops=loops)
    except ValueError as exc:
        raise UserError(f"--eval-loops {loops}: {exc}") from None


def _compiled(model, ctx: DistContext, seq_len: int, loops: int, vocab: int, cfg: EvalConfig):
    """torch.compile on CUDA, warmed up on random tokens: validation tokens never touch warm-up.

    With TTT the training graph is compiled too, by a backward on random tokens; no optimizer
    step is taken and the gradients are dropped, so the weights stay as loaded."""
    if ctx.device.type != "cuda":
        return model
    compiled = torch.compile(model, dynamic=False)
    generator = torch.Generator(ctx.device).manual_seed(0)
    x = torch.randint(0, vocab, (cfg.batch_seqs, seq_len + 1), device=ctx.device, generator=generator)
    with torch.no_grad(), autocast(ctx.device):
        compiled(x[:, :-1], x[:, 1:], loops=loops, reduction="none")
    if cfg.ttt:
        model.train()
        with autocast(ctx.device):
            compiled(x[:, :-1], x[:, 1:], loops=loops).backward()
        model.zero_grad(set_to_none=True)
        model.eval()
    return compiled


def _ttt(cfg: EvalConfig, model, scorer, tokens, val, ctx: DistContext, seq_len: int, loops: int) -> dict:
    params = _ttt_parameters(model, cfg.ttt_params)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        result = _timed(ctx, "ttt", tokens, lambda progress: score_first_ttt(
            scorer, tokens, plan_windows(tokens.size, seq_len, cfg.stride), val.tables, ctx, loops, cfg.batch_seqs,
            chunk_tokens=cfg.ttt_chunk_tokens, epochs=cfg.ttt_epochs, lr=cfg.ttt_lr, momentum=cfg.ttt_momentum,
            grad_clip=cfg.ttt_grad_clip, params=params, train_seqs_per_step=cfg.ttt_batch_seqs, seq_len=seq_len,
            progress=progress), chunks=True)
    finally:
        model.load_state_dict(original)  # nothing learned at test time persists
    return result


def _ttt_parameters(model, selection: str) -> list:
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(TTT_PARAM_SETS))
    if unknown or not wanted:
        raise UserError(f"--ttt-params {selection!r}: choose from {', '.join(TTT_PARAM_SETS)} (comma-separated)")
    roles = parameter_roles(model)
    return [p for name, p in model.named_parameters() if "all" in wanted or roles[name] in wanted]


def _timed(ctx: DistContext, name: str, tokens, run, chunks: bool = False) -> dict:
    """Run one scoring method with a progress line on rank 0 (tokens scored, tokens/s, ETA)."""
    progress = Progress(f"eval {name}", "tokens", total_items=int(tokens.size - 1)) if ctx.is_main else None
    start = time.perf_counter()
    sums: Sums = run(progress)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress.close()
    result = sums.result()
    entry = {"val_loss": result.loss, "val_bpb": result.bpb, "tokens": result.tokens, "bytes": result.bytes,
             "seconds": seconds}
    if chunks:
        entry["chunks"] = sums.chunks
    _say(ctx, f"  {name:<8} val_loss {result.loss:.4f}  val_bpb {result.bpb:.4f}  {result.tokens:,} tokens  "
              f"{seconds:.1f}s ({result.tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return entry


def _check_bytes(dataset, results: dict) -> None:
    """Every method scores the whole split: its bytes must be the decoded text's UTF-8 length."""
    expected = dataset.splits["val"].bytes
    for name, entry in results.items():
        if expected is not None and entry["bytes"] != expected:
            raise RuntimeError(f"{name} scored {entry['bytes']} bytes, the validation text has {expected}")


def _say(ctx: DistContext, line: str) -> None:
    if ctx.is_main:
        print(line, file=sys.stderr, flush=True)
