"""The one scoring core: a model and a token stream → Σ nll, target count and byte count.

Positions. The stream holds tokens 0..n-1; *target position* t (1 <= t <= n-1) is token t,
predicted from the tokens before it. A `Window` feeds tokens[start:end] and predicts target
positions start+1..end; it *scores* target positions score_from..end (inclusive).

Window policies (each plan scores every target position 1..n-1 exactly once, in stream order):
- **sliding** (`sliding_windows`): windows of `seq_len` inputs whose ends advance by `stride`;
  the first scores all its targets, every later one only the targets after the previous
  window's end (its last `stride`, or fewer at the end of the stream).
- **plain** (`plain_windows`): the sliding plan with stride = seq_len, i.e. non-overlapping
  windows of seq_len targets. *The tail*: the targets after the last full window (fewer than
  seq_len of them) are scored by one more full-length window that ends at the last target and
  scores only those tail targets; the tokens before them serve as its context. So plain scores
  every target once, its byte count is the whole split's, and all its batches share one shape.
  (The challenge's baseline `eval_val` drops that tail instead: fewer than seq_len of ~62M
  targets on FineWeb, a difference below 1e-5 BPB.) Train validation, `ema-finalize --compare`,
  `quantize --eval` and `eval` all report plain scores through `score_plain`.
- **chunked** (`windows_by_chunk`): a sliding plan grouped by the chunk of C targets that holds
  each window's first scored target; score-first TTT (golfctl/ttt.py) scores chunk by chunk.

Fixed shapes. Every forward is (batch_seqs, seq_len), whatever the plan: a rank's last, partial
batch is filled with rows that score nothing, and a window shorter than seq_len (a stream
shorter than one window) is padded on the right, where causal attention cannot see it. So a
compiled model meets one shape, compiled once before the clock (see `warm_up` in golfctl/ttt.py).

Distributed. Ranks take contiguous ranges of windows; float64 sums are all-reduced, so every
rank returns the same totals and the number of ranks changes results only by float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from golfctl.bpb import TargetBytes, bits_per_byte
from golfctl.distributed import DistContext, all_reduce_float64, all_reduce_sum_, share
from golfctl.precision import autocast
from golfctl.progress import Progress, global_steps

Tokens = np.ndarray | Tensor  # the whole stream: uint16 numpy array or integer torch tensor, shape (n,)
PLAIN_BATCH_TOKENS = 131_072  # tokens per forward of a plain score, at most…
PLAIN_BATCH_LOGITS = 1 << 28  # …and at most this many logits (1 GiB in float32): an 8192 vocabulary gets 32,768


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

    @property
    def loss(self) -> float:
        """Mean nll in nats per target."""
        return self.nll / self.tokens

    @property
    def bpb(self) -> float:
        return bits_per_byte(self.nll, self.bytes)


def sliding_windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
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


def plain_windows(n_tokens: int, seq_len: int) -> list[Window]:
    """Non-overlapping windows of seq_len targets; the tail policy is in the module docstring."""
    return sliding_windows(n_tokens, seq_len, seq_len)


def windows_by_chunk(windows: Sequence[Window], chunk_tokens: int) -> list[list[Window]]:
    """Windows grouped by the chunk (target positions i·C+1 .. (i+1)·C) holding their first scored
    target; one list per chunk, some possibly empty."""
    check_plan(windows)
    groups: list[list[Window]] = [[] for _ in range(math.ceil(windows[-1].end / chunk_tokens))]
    for w in windows:
        groups[(w.score_from - 1) // chunk_tokens].append(w)
    return groups


@dataclass(frozen=True)
class Scorer:
    """What scoring needs besides the tokens: the model (compiled or not), what targets are worth in bytes
    (byte tables, or a CaseOps sidecar: golfctl/bpb.py), ranks, loop count, and the one forward shape
    (batch_seqs, seq_len)."""

    model: nn.Module
    tables: TargetBytes
    ctx: DistContext
    loops: int
    batch_seqs: int
    seq_len: int

    def __post_init__(self):
        if self.batch_seqs < 1 or self.seq_len < 1:
            raise ValueError(f"batch_seqs and seq_len must be positive, got {self.batch_seqs}, {self.seq_len}")

    def score(self, tokens: Tokens, windows: Sequence[Window], progress: Progress | None = None,
              per_target: bool = False) -> Sums:
        """Σ nll, targets and bytes of the scored targets of `windows` (a plan of consecutive windows),
        every rank taking its share. `progress` (rank 0's) counts scored targets of all ranks."""
        target_nll = new_target_buffer(windows, self.ctx) if per_target else None
        sums = self.score_into(tokens, windows, target_nll, progress)
        if target_nll is not None:
            all_reduce_sum_(target_nll)  # each position was written by exactly one rank, zeros elsewhere
        return Sums(sums.nll, sums.tokens, sums.bytes, target_nll)

    def score_into(self, tokens: Tokens, windows: Sequence[Window], target_nll: Tensor | None,
                   progress: Progress | None = None) -> Sums:
        """`score`, writing this rank's scored positions into `target_nll` (the caller sums that buffer
        over ranks once, after its last call). Leaves the model in eval mode."""
        check_plan(windows, len(tokens), first=None)
        self.model.eval()
        mine = share(windows, self.ctx)
        local = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)  # [Σ nll, bytes]
        steps = iter(self._progress_steps(windows)) if progress is not None else None
        with torch.no_grad():  # not inference_mode: TTT trains the same model afterwards
            for batch in _batches(mine, self.batch_seqs):
                local += self._score_batch(tokens, batch, target_nll)
                if steps is not None:
                    progress.update(next(steps))
        nll, n_tokens, n_bytes = all_reduce_float64(
            [local[0].item(), sum(w.n_scored for w in mine), local[1].item()], self.ctx)
        if steps is not None:
            progress.update(next(steps))  # every rank is done: the exact total
        return Sums(nll, int(n_tokens), int(n_bytes))

    def _progress_steps(self, windows: Sequence[Window]) -> list[int]:
        """Targets of all ranks to add to the progress count after each of this rank's batches, then
        once all are done (golfctl.progress.global_steps)."""
        shares = (share(windows, replace(self.ctx, rank=r)) for r in range(self.ctx.world_size))
        per_rank = [[sum(w.n_scored for w in batch) for batch in _batches(s, self.batch_seqs)] for s in shares]
        return global_steps(per_rank, self.ctx.rank)

    def _score_batch(self, tokens: Tokens, batch: list[Window], target_nll: Tensor | None) -> Tensor:
        device, length, width = self.ctx.device, batch[0].length, self.seq_len
        if length > width:
            raise ValueError(f"window of {length} inputs is longer than the scorer's seq_len {width}")
        rows = padded_rows(tokens, [w.start for w in batch], length + 1, self.batch_seqs, width + 1, device)
        x, y = rows[:, :-1], rows[:, 1:]  # (batch_seqs, seq_len) inputs and targets
        with autocast(device):
            nll = self.model(x, y, loops=self.loops, reduction="none").double()  # (batch_seqs, seq_len)
        # a filler row's offset is the width: it scores nothing
        offsets = torch.tensor([w.offset for w in batch] + [width] * (self.batch_seqs - len(batch)), device=device)
        columns = torch.arange(width, device=device)  # (seq_len,)
        # each real row scores its last n_scored targets, none of the padding after `length`
        scored = (columns[None, :] >= offsets[:, None]) & (columns[None, :] < length)  # (batch_seqs, seq_len)
        # stream position of each row's first target (batch_seqs,): a sidecar's bytes go by position
        first = torch.tensor([w.start + 1 for w in batch] + [0] * (self.batch_seqs - len(batch)), device=device)
        n_bytes = torch.where(scored, self.tables.row_bytes(x, y, first), 0).sum()
        if target_nll is not None:
            positions = first[:, None] + columns  # (batch_seqs, seq_len)
            target_nll[positions[scored]] = nll[scored]
        return torch.stack((torch.where(scored, nll, 0.0).sum(), n_bytes.double()))  # (2,)


def score_plain(model: nn.Module, tokens: Tokens, tables: TargetBytes, seq_len: int, ctx: DistContext,
                loops: int, progress: Progress | None = None) -> Sums:
    """The plain score (module docstring) of the whole stream `tokens`, up to PLAIN_BATCH_TOKENS per
    forward and PLAIN_BATCH_LOGITS logits of its `tok_emb` vocabulary (fewer for a short stream, which
    one padded batch would waste)."""
    was_training = model.training
    try:
        windows = plain_windows(len(tokens), seq_len)
        per_rank = -(-len(windows) // ctx.world_size)
        batch_tokens = min(PLAIN_BATCH_TOKENS, PLAIN_BATCH_LOGITS // model.tok_emb.num_embeddings)
        scorer = Scorer(model, tables, ctx, loops, max(1, min(batch_tokens // seq_len, per_rank)), seq_len)
        return scorer.score(tokens, windows, progress)
    finally:
        model.train(was_training)


def new_target_buffer(windows: Sequence[Window], ctx: DistContext) -> Tensor:
    """(n,) float64 zeros: one nll slot per stream position that `windows` reach."""
    return torch.zeros(windows[-1].end + 1, dtype=torch.float64, device=ctx.device)


def _token_rows(tokens: Tokens, starts: Sequence[int], length: int, device: torch.device) -> Tensor:
    """(len(starts), length) int64 rows tokens[a:a+length], on `device`."""
    if isinstance(tokens, np.ndarray):
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
        return torch.from_numpy(tokens[index].astype(np.int64)).to(device)
    index = torch.as_tensor(starts, device=tokens.device)[:, None] + torch.arange(length, device=tokens.device)
    return tokens[index].long().to(device)


def padded_rows(tokens: Tokens, starts: Sequence[int], length: int, n_rows: int, width: int,
                device: torch.device) -> Tensor:
    """(n_rows, width) int64: rows tokens[a:a+length] for a in `starts` (length <= width, len(starts)
    <= n_rows), zero-padded on the right and below, so that every forward has one shape."""
    rows = _token_rows(tokens, starts, length, device) if starts else None
    if rows is not None and rows.shape == (n_rows, width):
        return rows
    out = torch.zeros(n_rows, width, dtype=torch.int64, device=device)
    if rows is not None:
        out[:len(starts), :length] = rows
    return out


def check_plan(windows: Sequence[Window], n_tokens: int | None = None, first: int | None = 1) -> None:
    """Windows must score target positions first, first+1, … in order, each once, within the stream:
    the TTT watermark relies on 'everything up to the highest scored position is scored'. A whole
    plan starts at target 1; `first=None` accepts any start (one chunk of a plan)."""
    if not windows:
        raise ValueError("no windows to score")
    expected = windows[0].score_from if first is None else first
    for w in windows:
        if w.score_from != expected or not 0 <= w.start < w.score_from <= w.end:
            raise ValueError(f"window {w} does not continue a plan that has scored targets up to {expected - 1}")
        expected = w.end + 1
    if n_tokens is not None and windows[-1].end >= n_tokens:
        raise ValueError(f"windows reach target position {windows[-1].end}; the stream has {n_tokens} tokens")


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
