"""Sliding-window scoring and score-first test-time training (DESIGN.md, "Sliding window" and
"Score-first TTT").

Positions. The stream holds tokens 0..n-1; *target position* t (1 <= t <= n-1) is token t,
predicted from the tokens before it. A `Window` feeds tokens[start:end] and predicts target
positions start+1..end; it *scores* target positions score_from..end (inclusive). A plan from
`plan_windows` scores every target position exactly once, in stream order.

Distributed. Ranks take contiguous ranges of windows (and, in TTT, of each step's training
sequences); float64 sums are all-reduced, so every rank returns the same totals and the number
of ranks changes results only by float rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from golfctl.bpb import TorchByteTables, bits_per_byte
from golfctl.distributed import DistContext, all_reduce_float64, all_reduce_sum_
from golfctl.progress import Progress
from golfctl.validation import ValResult, autocast

Tokens = np.ndarray | Tensor  # the whole stream: uint16 numpy array or integer torch tensor, shape (n,)


@dataclass(frozen=True, slots=True)
class Window:
    start: int  # first input token: inputs are tokens[start:end], targets positions start+1..end
    end: int  # last target position (one past the last input)
    score_from: int  # first scored target position; the window scores score_from..end

    @property
    def length(self) -> int:
        """Inputs (= targets) per row."""
        return self.end - self.start

    @property
    def n_scored(self) -> int:
        return self.end - self.score_from + 1

    @property
    def offset(self) -> int:
        """Index of the first scored target in the window's (length,) row of targets."""
        return self.score_from - self.start - 1


@dataclass(frozen=True)
class Sums:
    """Totals over all ranks. Counts are reduced in float64, exact up to 2**53, and kept as ints."""

    nll: float  # Σ nll in nats, float64
    tokens: int
    bytes: int
    # (n,) float64 nll per target position (index 0, which is no target, holds 0), on every rank;
    # only when asked for: it costs 8 bytes per stream token and one all-reduce of that size.
    per_target: Tensor | None = None

    def result(self) -> ValResult:
        return ValResult(self.nll / self.tokens, bits_per_byte(self.nll, self.bytes), self.tokens, self.bytes)


@dataclass(frozen=True)
class TTTResult(Sums):
    # {"nll_sum", "tokens", "bytes"} per chunk in stream order: what that chunk's windows scored
    # (their last targets may lie in the next chunk; a chunk that starts no window records zeros).
    chunks: list[dict] = field(default_factory=list)


def plan_windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """Windows of seq_len inputs whose ends advance by `stride`; each scores the targets after the
    previous window's end, so every target position 1..n-1 is scored exactly once.

    A stream with fewer than seq_len + 1 tokens gives one window of all n-1 inputs. The last
    window keeps its full length and scores fewer than `stride` targets when `stride` does not
    divide what is left.
    """
    if n_tokens < 2:
        raise ValueError(f"a stream of {n_tokens} tokens has no target to score")
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise ValueError(f"need 1 <= stride <= seq_len, got stride={stride}, seq_len={seq_len}")
    last = n_tokens - 1  # last target position
    length = min(seq_len, last)
    windows = [Window(0, length, 1)]
    while windows[-1].end < last:
        prev = windows[-1].end
        end = min(prev + stride, last)
        windows.append(Window(end - length, end, prev + 1))
    return windows


def score_windows(model: nn.Module, tokens: Tokens, windows: Sequence[Window], tables: TorchByteTables,
                  ctx: DistContext, loops: int, batch_seqs: int, per_target: bool = False,
                  progress: Progress | None = None) -> Sums:
    """Σ nll, targets and bytes of the scored targets of `windows`, `batch_seqs` windows per forward.
    `progress` (rank 0's) counts this rank's scored targets times the number of ranks."""
    _check_plan(tokens, windows)
    _check_positive(batch_seqs=batch_seqs)
    target_nll = _per_target_buffer(windows, ctx) if per_target else None
    was_training = model.training
    try:
        nll, n_tokens, n_bytes = _score_all_ranks(model, tokens, windows, tables, ctx, loops, batch_seqs, target_nll,
                                                  progress)
    finally:
        model.train(was_training)
    if target_nll is not None:
        all_reduce_sum_(target_nll)  # each position was written by exactly one rank, zeros elsewhere
    return Sums(nll, n_tokens, n_bytes, target_nll)


def score_first_ttt(model: nn.Module, tokens: Tokens, windows: Sequence[Window], tables: TorchByteTables,
                    ctx: DistContext, loops: int, batch_seqs: int, *, chunk_tokens: int, epochs: int, lr: float,
                    momentum: float, grad_clip: float, params: Sequence[nn.Parameter], train_seqs_per_step: int,
                    seq_len: int, per_target: bool = False, progress: Progress | None = None) -> TTTResult:
    """Score each chunk's windows with the current weights, then train on that chunk (not the last).

    Chunk i holds target positions i·C+1 .. (i+1)·C (C = chunk_tokens); a window belongs to the
    chunk of its first scored target. Training: `epochs` passes over the chunk's sequences
    (`chunk_sequences`) in stream order, `train_seqs_per_step` sequences per SGD step over all
    ranks, mean loss, gradient norm clipped to `grad_clip` (0 = off), learning rate
    lr·0.5·(1 + cos(π·i/(n_chunks − 1))). Only `params` train; momentum carries across chunks.

    Mutates the model's weights: the caller restores them. requires_grad flags, train/eval mode
    and .grad (None) of `params` are restored here.
    """
    _check_plan(tokens, windows)
    _check_positive(batch_seqs=batch_seqs, chunk_tokens=chunk_tokens, train_seqs_per_step=train_seqs_per_step,
                    seq_len=seq_len)
    if chunk_tokens < seq_len:
        raise ValueError(f"chunk_tokens {chunk_tokens} < seq_len {seq_len}: no chunk would hold a training sequence")
    if epochs < 0 or lr < 0 or not 0 <= momentum < 1 or grad_clip < 0 or (epochs > 0 and not params):
        raise ValueError(f"bad TTT settings: epochs={epochs}, lr={lr}, momentum={momentum}, grad_clip={grad_clip}, "
                         f"{len(params)} params")
    last_target = windows[-1].end
    by_chunk = _windows_by_chunk(windows, chunk_tokens)
    n_chunks = len(by_chunk)
    target_nll = _per_target_buffer(windows, ctx) if per_target else None
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum) if epochs > 0 else None
    chunks: list[dict] = []
    scored_upto = 0  # highest target position scored so far; the plan is contiguous, so all below are too
    with _training_only(model, params):
        for i, chunk_windows in enumerate(by_chunk):
            nll, n_tokens, n_bytes = _score_all_ranks(model, tokens, chunk_windows, tables, ctx, loops, batch_seqs,
                                                      target_nll, progress)
            chunks.append({"nll_sum": nll, "tokens": n_tokens, "bytes": n_bytes})
            scored_upto = max([scored_upto] + [w.end for w in chunk_windows])
            if opt is None or i == n_chunks - 1:
                continue
            for group in opt.param_groups:
                group["lr"] = ttt_lr(lr, i, n_chunks)
            model.train()
            _train_chunk(model, tokens, chunk_sequences(i, chunk_tokens, last_target, seq_len), scored_upto,
                         seq_len, opt, params, ctx, loops, train_seqs_per_step, grad_clip, epochs)
    if target_nll is not None:
        all_reduce_sum_(target_nll)
    return TTTResult(sum(c["nll_sum"] for c in chunks), sum(c["tokens"] for c in chunks),
                     sum(c["bytes"] for c in chunks), target_nll, chunks)


def ttt_lr(lr: float, chunk: int, n_chunks: int) -> float:
    """Cosine from lr at chunk 0 to 0 at the last chunk (which never trains)."""
    if n_chunks < 2:
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * chunk / (n_chunks - 1)))


def chunk_sequences(chunk: int, chunk_tokens: int, last_target: int, seq_len: int) -> list[int]:
    """Input starts a of chunk `chunk`'s training sequences: inputs tokens[a:a+seq_len] predict target
    positions a+1..a+seq_len, all inside the chunk. The first input is the token before the chunk
    (already scored). A remainder of fewer than seq_len targets at the chunk's end is not trained on."""
    lo = chunk * chunk_tokens + 1
    hi = min((chunk + 1) * chunk_tokens, last_target)
    return [lo - 1 + j * seq_len for j in range(max(0, hi - lo + 1) // seq_len)]


def _train_chunk(model: nn.Module, tokens: Tokens, starts: Sequence[int], scored_upto: int, seq_len: int,
                 opt: torch.optim.Optimizer, params: Sequence[nn.Parameter], ctx: DistContext, loops: int,
                 train_seqs_per_step: int, grad_clip: float, epochs: int) -> None:
    """`epochs` passes of SGD steps over the sequences at `starts`, refusing any unscored target."""
    for _ in range(epochs):
        for s in range(0, len(starts), train_seqs_per_step):
            step = starts[s:s + train_seqs_per_step]
            # Checked on the whole step, so every rank raises together instead of one hanging in a collective.
            last = max(step) + seq_len
            if last > scored_upto:
                raise RuntimeError(f"TTT would train on target position {last} before it is scored "
                                   f"(scored up to {scored_upto})")
            _sgd_step(model, tokens, step, seq_len, opt, params, ctx, loops, grad_clip)


def _sgd_step(model: nn.Module, tokens: Tokens, step: Sequence[int], seq_len: int, opt: torch.optim.Optimizer,
              params: Sequence[nn.Parameter], ctx: DistContext, loops: int, grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    mine = _share(step, ctx)
    if mine:  # a rank may get no sequence of a short step; it still joins the all-reduce
        rows = _rows(tokens, mine, seq_len + 1, ctx.device)  # (b, T+1)
        with autocast(ctx.device):
            losses = model(rows[:, :-1], rows[:, 1:], loops=loops, reduction="none")  # (b, T) float32
        # Divided by the whole step's target count: the sum over ranks is the gradient of the step's mean loss.
        (losses.sum() / (len(step) * seq_len)).backward()
    _all_reduce_grads(params, ctx)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def _all_reduce_grads(params: Sequence[nn.Parameter], ctx: DistContext) -> None:
    """Sum gradients over ranks in one flat all-reduce. A missing gradient becomes zeros on every
    path, so SGD treats a parameter the same whatever the number of ranks."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not ctx.enabled:
        return
    flat = all_reduce_sum_(torch.cat([p.grad.reshape(-1) for p in params]))  # (Σ numel,)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


@contextlib.contextmanager
def _training_only(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """requires_grad on `params` only while TTT runs; flags, train/eval mode and grads restored after."""
    chosen = {id(p) for p in params}
    if not chosen <= {id(p) for p in model.parameters()}:
        raise ValueError("TTT params must be parameters of the model")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for p in params:
            p.grad = None
        model.train(was_training)


def _score_all_ranks(model: nn.Module, tokens: Tokens, windows: Sequence[Window], tables: TorchByteTables,
                     ctx: DistContext, loops: int, batch_seqs: int, target_nll: Tensor | None,
                     progress: Progress | None = None) -> tuple[float, int, int]:
    """(Σ nll, targets, bytes) of `windows`, each rank scoring its share; leaves the model in eval mode.
    Fills this rank's positions of `target_nll` when given (the caller reduces it)."""
    model.eval()
    mine = _share(windows, ctx)
    local = _score_local(model, tokens, mine, tables, ctx, loops, batch_seqs, target_nll, progress)  # (2,)
    nll, n_tokens, n_bytes = all_reduce_float64([local[0].item(), sum(w.n_scored for w in mine), local[1].item()],
                                                ctx)
    return nll, int(n_tokens), int(n_bytes)


@torch.no_grad()  # not inference_mode: TTT trains the same model afterwards
def _score_local(model: nn.Module, tokens: Tokens, windows: Sequence[Window], tables: TorchByteTables,
                 ctx: DistContext, loops: int, batch_seqs: int, target_nll: Tensor | None,
                 progress: Progress | None) -> Tensor:
    """(2,) float64 [Σ nll, bytes] of these windows' scored targets."""
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for batch in _batches(windows, batch_seqs):
        total += _score_batch(model, tokens, batch, tables, ctx.device, loops, target_nll)
        if progress is not None:
            progress.update(sum(w.n_scored for w in batch) * ctx.world_size)
    return total


def _score_batch(model: nn.Module, tokens: Tokens, batch: list[Window], tables: TorchByteTables,
                 device: torch.device, loops: int, target_nll: Tensor | None) -> Tensor:
    length = batch[0].length
    rows = _rows(tokens, [w.start for w in batch], length + 1, device)  # (B, T+1)
    x, y = rows[:, :-1], rows[:, 1:]  # (B, T) inputs and targets
    with autocast(device):
        nll = model(x, y, loops=loops, reduction="none").double()  # (B, T)
    offsets = torch.tensor([w.offset for w in batch], device=device)  # (B,)
    columns = torch.arange(length, device=device)  # (T,)
    scored = columns[None, :] >= offsets[:, None]  # (B, T): each row scores its last n_scored targets
    n_bytes = torch.where(scored, tables.target_bytes(x, y), 0).sum()
    if target_nll is not None:
        positions = torch.tensor([w.start + 1 for w in batch], device=device)[:, None] + columns  # (B, T)
        target_nll[positions[scored]] = nll[scored]
    return torch.stack((torch.where(scored, nll, 0.0).sum(), n_bytes.double()))  # (2,)


def _rows(tokens: Tokens, starts: Sequence[int], length: int, device: torch.device) -> Tensor:
    """(len(starts), length) int64 rows tokens[a:a+length], on `device`."""
    if isinstance(tokens, np.ndarray):
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
        return torch.from_numpy(tokens[index].astype(np.int64)).to(device)
    index = torch.as_tensor(starts, device=tokens.device)[:, None] + torch.arange(length, device=tokens.device)
    return tokens[index].long().to(device)


def _batches(windows: Sequence[Window], batch_seqs: int) -> Iterator[list[Window]]:
    """Consecutive groups of up to batch_seqs windows of one length (a plan mixes lengths only
    in a short stream's single window, but a batch must be rectangular whatever it is given)."""
    batch: list[Window] = []
    for w in windows:
        if batch and (len(batch) == batch_seqs or w.length != batch[0].length):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def _share(items: Sequence, ctx: DistContext) -> Sequence:
    """This rank's contiguous slice; sizes differ by at most one, and some may be empty."""
    n = len(items)
    return items[n * ctx.rank // ctx.world_size: n * (ctx.rank + 1) // ctx.world_size]


def _windows_by_chunk(windows: Sequence[Window], chunk_tokens: int) -> list[list[Window]]:
    """Windows grouped by the chunk holding their first scored target; one list per chunk."""
    groups: list[list[Window]] = [[] for _ in range(math.ceil(windows[-1].end / chunk_tokens))]
    for w in windows:
        groups[(w.score_from - 1) // chunk_tokens].append(w)
    return groups


def _per_target_buffer(windows: Sequence[Window], ctx: DistContext) -> Tensor:
    return torch.zeros(windows[-1].end + 1, dtype=torch.float64, device=ctx.device)  # (n,)


def _check_plan(tokens: Tokens, windows: Sequence[Window]) -> None:
    """Windows must score target positions 1, 2, … in order, each once, within the stream: the TTT
    watermark relies on 'everything up to the highest scored position is scored'."""
    if not windows:
        raise ValueError("no windows to score")
    expected = 1
    for w in windows:
        if w.score_from != expected or not 0 <= w.start < w.score_from <= w.end:
            raise ValueError(f"window {w} does not continue a plan that has scored targets up to {expected - 1}")
        expected = w.end + 1
    if windows[-1].end >= len(tokens):
        raise ValueError(f"windows reach target position {windows[-1].end}; the stream has {len(tokens)} tokens")


def _check_positive(**values: int) -> None:
    bad = [f"{k}={v}" for k, v in values.items() if v < 1]
    if bad:
        raise ValueError(f"must be positive: {', '.join(bad)}")
