"""Score-first test-time training (docs/design.md, "Score-first TTT").

The validation stream is cut into chunks of C target positions; each window of a sliding plan
belongs to the chunk holding its first scored target. For chunk i: score all its windows with
the current weights (no gradient), then, unless it is the last chunk, train on chunk i's
tokens. No target is trained on before it has been scored: the loop keeps a watermark of the
highest scored position and refuses any training sequence that reaches past it.

Training on a chunk: `epochs` passes over its sequences (`chunk_sequences`) in stream order,
`batch_seqs` sequences per SGD step over all ranks (each rank takes a contiguous share), the
mean loss of the step, gradients summed over ranks, norm clipped to `grad_clip` (0 = off),
learning rate lr·0.5·(1 + cos(π·i/(n_chunks − 1))); momentum carries across chunks. Every rank's
training forward has one shape, `step_rows` sequences (the most a step can give a rank): a
shorter share is filled with rows whose loss weight is 0 (`padded_step_loss`), so one graph
serves every step. `warm_up` compiles every graph of a TTT eval on random tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from golfctl.distributed import all_reduce_gradients, all_reduce_sum_, share
from golfctl.precision import autocast
from golfctl.progress import Progress
from golfctl.scoring import (Scorer, Sums, Tokens, Window, new_target_buffer, padded_rows, plain_windows,
                             windows_by_chunk)


@dataclass(frozen=True)
class TTTConfig:
    chunk_tokens: int = field(default=32_768, metadata={"help": "Target positions per TTT chunk."})
    lr: float = field(default=0.005, metadata={"help": "Peak SGD learning rate (cosine over chunks)."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum, carried across chunks."})
    epochs: int = field(default=3, metadata={"help": "Passes over each chunk (0: score only)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient norm clip (0 = off)."})
    params: str = field(default="all", metadata={"help": "all, or a comma list of mlp, attn, scalar, embed."})
    batch_seqs: int = field(default=32, metadata={"help": "Training sequences per TTT step, over all ranks."})

    def problems(self) -> list[str]:
        p = [f"--ttt-{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
             for k in ("chunk_tokens", "batch_seqs") if getattr(self, k) < 1]
        if self.epochs < 0:
            p.append(f"--ttt-epochs must be >= 0, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            p.append(f"--ttt-lr must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            p.append(f"--ttt-momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            p.append(f"--ttt-grad-clip must be a finite number >= 0, got {self.grad_clip}")
        return p


@dataclass(frozen=True)
class ChunkedSums(Sums):
    # {"nll_sum", "tokens", "bytes"} per chunk in stream order: what that chunk's windows scored
    # (their last targets may lie in the next chunk; a chunk that starts no window records zeros).
    chunks: list[dict] = field(default_factory=list)


def score_by_chunk(scorer: Scorer, tokens: Tokens, windows: Sequence[Window], chunk_tokens: int,
                   progress: Progress | None = None, target_nll: Tensor | None = None,
                   after_chunk: Callable[[int, int, int], None] | None = None) -> ChunkedSums:
    """Score a sliding plan chunk by chunk (`windows_by_chunk`), calling `after_chunk(i, n_chunks,
    scored_upto)` after chunk i is scored. Without a callback this is sliding's score, split by TTT's
    chunks: the same windows in the same batches as score-first TTT's scoring, so chunk 0 matches it."""
    chunks = windows_by_chunk(windows, chunk_tokens)
    sums: list[Sums] = []
    scored_upto = 0  # the watermark: every target position up to here has been scored
    for i, chunk in enumerate(chunks):
        sums.append(scorer.score_into(tokens, chunk, target_nll, progress) if chunk else Sums(0.0, 0, 0))
        scored_upto = max([scored_upto] + [w.end for w in chunk])
        if after_chunk is not None:
            after_chunk(i, len(chunks), scored_upto)
    if target_nll is not None:
        all_reduce_sum_(target_nll)
    return ChunkedSums(sum(s.nll for s in sums), sum(s.tokens for s in sums), sum(s.bytes for s in sums), target_nll,
                       [{"nll_sum": s.nll, "tokens": s.tokens, "bytes": s.bytes} for s in sums])


def score_first_ttt(scorer: Scorer, tokens: Tokens, windows: Sequence[Window], cfg: TTTConfig,
                    params: Sequence[nn.Parameter], progress: Progress | None = None,
                    per_target: bool = False) -> ChunkedSums:
    """Score each chunk's windows with the current weights, then train `params` on that chunk.

    Mutates the model's weights: the caller restores them. requires_grad flags, train/eval mode
    and .grad (None) of `params` are restored here."""
    problems = cfg.problems()
    seq_len = windows[0].length
    if cfg.chunk_tokens < seq_len:
        problems.append(f"--ttt-chunk-tokens {cfg.chunk_tokens} < seq_len {seq_len}: no chunk would hold a "
                        "training sequence")
    if cfg.epochs > 0 and not params:
        problems.append("no parameters to train")
    if problems:
        raise ValueError("bad TTT settings: " + "; ".join(problems))
    last_target = windows[-1].end
    trainer = _ChunkTrainer(scorer, tokens, cfg, params, seq_len) if cfg.epochs > 0 else None

    def train_on_chunk(i: int, n_chunks: int, scored_upto: int) -> None:
        if trainer is not None and i < n_chunks - 1:
            trainer.train(chunk_sequences(i, cfg.chunk_tokens, last_target, seq_len), scored_upto,
                          ttt_lr(cfg.lr, i, n_chunks))

    with _training_only(scorer.model, params):
        return score_by_chunk(scorer, tokens, windows, cfg.chunk_tokens, progress,
                              new_target_buffer(windows, scorer.ctx) if per_target else None, train_on_chunk)


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


class _ChunkTrainer:
    """SGD on already-scored sequences, shared out over ranks; one optimizer for the whole stream."""

    def __init__(self, scorer: Scorer, tokens: Tokens, cfg: TTTConfig, params: Sequence[nn.Parameter],
                 seq_len: int):
        self.scorer, self.tokens, self.cfg, self.params, self.seq_len = scorer, tokens, cfg, params, seq_len
        self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)

    def train(self, starts: Sequence[int], scored_upto: int, lr: float) -> None:
        """`epochs` passes of SGD steps over the sequences at `starts`, refusing any unscored target."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.scorer.model.train()
        for _ in range(self.cfg.epochs):
            for s in range(0, len(starts), self.cfg.batch_seqs):
                step = starts[s:s + self.cfg.batch_seqs]
                # Checked on the whole step, so every rank raises together instead of one hanging in a collective.
                last = max(step) + self.seq_len
                if last > scored_upto:
                    raise RuntimeError(f"TTT would train on target position {last} before it is scored "
                                       f"(scored up to {scored_upto})")
                self._step(step)

    def _step(self, step: Sequence[int]) -> None:
        ctx = self.scorer.ctx
        self.opt.zero_grad(set_to_none=True)
        rows = step_rows(self.cfg, self.seq_len, ctx.world_size)
        loss = padded_step_loss(self.scorer.model, self.tokens, share(step, ctx), rows, self.seq_len,
                                self.scorer.loops, len(step) * self.seq_len, ctx.device)
        loss.backward()  # a rank whose share is empty still runs the forward: it joins the all-reduce
        for p in self.params:  # a missing gradient is zero on every rank, so all reduce the same tensors
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_gradients(self.params, ctx, mean=False)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()


def step_sequences(cfg: TTTConfig, seq_len: int) -> int:
    """The most sequences one training step holds: batch_seqs, or all of a chunk's if fewer."""
    return min(cfg.batch_seqs, cfg.chunk_tokens // seq_len)


def step_rows(cfg: TTTConfig, seq_len: int, world_size: int) -> int:
    """Rows of every rank's training forward: a full step shared out over the ranks in contiguous slices."""
    return -(-step_sequences(cfg, seq_len) // world_size)


def warm_up(scorer: Scorer, vocab_size: int, cfg: TTTConfig | None, params: Sequence[nn.Parameter]) -> None:
    """Run, on random tokens (never validation tokens), every compiled call an eval makes: a score
    with the model's own parameter flags and, with `cfg`, `score_first_ttt` over two chunks, so its
    scoring (under TTT's flags) and one training step of `step_rows` rows. The weights change:
    the caller restores them."""
    seq_len = scorer.seq_len
    per_chunk = step_sequences(cfg, seq_len) if cfg is not None else 1
    tokens = torch.randint(0, vocab_size, (2 * per_chunk * seq_len + 1,), generator=torch.Generator().manual_seed(0))
    windows = plain_windows(tokens.numel(), seq_len)
    scorer.score(tokens, windows)
    if cfg is not None:  # chunks of per_chunk sequences: the same step_rows as cfg's, one step
        score_first_ttt(scorer, tokens, windows, replace(cfg, chunk_tokens=per_chunk * seq_len, epochs=1), params)


def padded_step_loss(model: nn.Module, tokens: Tokens, starts: Sequence[int], n_rows: int, seq_len: int, loops: int,
                     step_targets: int, device: torch.device) -> Tensor:
    """Σ nll of the sequences at `starts` / step_targets, computed as one (n_rows, seq_len) forward:
    filler rows are weighted 0, so the loss and its gradient are those of the real rows alone.
    Divided by the whole step's target count, the sum over ranks is the gradient of the step's mean."""
    rows = padded_rows(tokens, starts, seq_len + 1, n_rows, seq_len + 1, device)  # (n_rows, T+1)
    weight = (torch.arange(n_rows, device=device) < len(starts)).float()[:, None]  # (n_rows, 1)
    with autocast(device):
        losses = model(rows[:, :-1], rows[:, 1:], loops=loops, reduction="none")  # (n_rows, T) float32
    return (losses * weight).sum() / step_targets


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
