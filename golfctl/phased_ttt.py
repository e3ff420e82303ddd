"""Phased LoRA test-time training: the 2026-04-27 record's evaluation (its train_gpt.py
`eval_val_ttt_phased`, lines 3021–3313, and `train_val_ttt_global_sgd_distributed`, 2926–3015).

Documents (`find_documents`): each runs from a BOS to the next document's BOS, which is its last target
(the last document runs to the stream's end), so every target after the first BOS is scored once.

Queue (`batch_queue`): documents sorted by length (stable), cut into batches of `batch_docs`; the
batches are then ordered by their longest document, longest first (stable).

A batch: one `DocumentLoRA` row per document. Document b's targets are cut into chunks of
`chunk_tokens`; for chunk c, all documents that have one are run together, each on a window of up to
`seq_len` inputs ending at the chunk's end (`chunk_window`), with causal attention over the window
(the record's `forward_ttt`). The chunk's targets are scored, and then, for the documents that have a
later chunk, one AdamW step (`grad_steps` of them) on the mean nll of that chunk per document, summed
over documents. So a target is always scored before the step that learns from it.
Adapters: at a new batch B is zeroed and AdamW starts afresh, while A stays (warm); a batch of
another size gets a fresh adapter set (new A) for itself; after each global phase every lane starts
a new one.

Phases (`phase_ends`): boundaries prefix·(p+1)/num_phases for p < num_phases (prefix = min(prefix_docs,
documents)). After the batch at which the documents scored so far in queue order reach a boundary
(one phase per batch at most), all weights of the model get SGD (`global_sgd`) on the concatenated
tokens of the documents scored so far, sorted by (batch in length order, position) and cut to the
boundary's count (`global_sgd_documents`), all of them already scored.

Lanes (golfctl's rule, not the record's; docs/frontier-parity.md). The record's ranks claim batches
from a shared counter and each rank's adapter A carries over to whatever batch it claims next, so its
result depends on timing. Here queue batch j belongs to lane j mod `lanes`; A carries over within a
lane only; rank r runs lanes r, r + world_size, …; every lane stops at each phase end, a queue index.
So the result does not depend on the number of ranks, and one lane is the record run on one GPU.
A is drawn from a generator per lane, seeded seed + lane (the record uses the global RNG).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from golfctl.bpb import TargetBytes
from golfctl.distributed import DistContext, all_reduce_gradients, all_reduce_sum_
from golfctl.lora import DocumentLoRA
from golfctl.model import GPT, layer_sequence
from golfctl.precision import autocast
from golfctl.progress import Progress
from golfctl.scoring import Sums, Tokens
from golfctl.shards import BOS_ID
from golfctl.ttt import ttt_lr

OPTIONAL_ADAPTERS = ("k", "mlp", "o")  # q, v and the head are always adapted (the record's k/mlp/o switches)


@dataclass(frozen=True)
class PhasedTTTConfig:
    """Defaults: the record's run (its log's "Hyperparameters:" block)."""

    batch_docs: int = field(default=64, metadata={"help": "Documents per LoRA batch (ttt_batch_size)."})
    chunk_tokens: int = field(default=48, metadata={"help": "Targets per document chunk: scored, then one step."})
    seq_len: int = field(default=2048, metadata={"help": "Most inputs a chunk's window holds (ttt_eval_seq_len)."})
    lora_rank: int = field(default=80, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=144.0, metadata={"help": "LoRA output scale alpha/rank (TTT_LORA_ALPHA)."})
    lora_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the adapters."})
    beta1: float = field(default=0.0, metadata={"help": "AdamW beta1 of the adapters."})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2 of the adapters."})
    weight_decay: float = field(default=0.5, metadata={"help": "AdamW weight decay of the adapters."})
    adam_eps: float = field(default=1e-10, metadata={"help": "AdamW eps of the adapters."})
    grad_steps: int = field(default=1, metadata={"help": "Adapter steps per chunk."})
    lora: str = field(default="k,mlp,o", metadata={
        "help": "Adapters besides q, v and the head: a comma list of k, mlp (MLP output), o (attention output), "
                "or none."})
    prefix_docs: int = field(default=2500, metadata={"help": "Documents scored before the last global phase."})
    num_phases: int = field(default=3, metadata={"help": "Global SGD phases over the prefix documents."})
    global_lr: float = field(default=1e-3, metadata={"help": "Peak SGD learning rate of a phase (cosine over chunks)."})
    global_momentum: float = field(default=0.9, metadata={"help": "SGD momentum of a phase."})
    global_epochs: int = field(default=1, metadata={"help": "Passes of a phase over its chunks."})
    global_chunk_tokens: int = field(default=32_768, metadata={"help": "Tokens per chunk of a phase's SGD."})
    global_batch_seqs: int = field(default=32, metadata={"help": "Sequences per SGD step of a phase."})
    global_seq_len: int = field(default=2048, metadata={"help": "Tokens per sequence of a phase's SGD."})
    global_grad_clip: float = field(default=1.0, metadata={"help": "Gradient norm clip of a phase (0 = off)."})
    lanes: int = field(default=8, metadata={
        "help": "Batch j goes to lane j mod lanes, which carries A; 1 is the record on one GPU, 8 its 8 GPUs."})
    seed: int = field(default=0, metadata={"help": "Seeds each lane's draws of A (lane l: seed + l)."})

    def problems(self) -> list[str]:
        positive = ("batch_docs", "chunk_tokens", "seq_len", "lora_rank", "grad_steps", "num_phases",
                    "global_chunk_tokens", "global_batch_seqs", "global_seq_len", "lanes")
        p = [f"--phased-{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
             for k in positive if getattr(self, k) < 1]
        p += [f"--phased-{k.replace('_', '-')} must be >= 0, got {getattr(self, k)}"
              for k in ("prefix_docs", "global_epochs", "seed") if getattr(self, k) < 0]
        p += [f"--phased-{k.replace('_', '-')} must be a finite number >= 0, got {getattr(self, k)}"
              for k in ("lora_lr", "weight_decay", "global_lr", "global_grad_clip")
              if not (math.isfinite(getattr(self, k)) and getattr(self, k) >= 0)]
        p += [f"--phased-{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
              for k in ("lora_alpha", "adam_eps") if not getattr(self, k) > 0]
        p += [f"--phased-{k.replace('_', '-')} must be in [0, 1), got {getattr(self, k)}"
              for k in ("beta1", "beta2", "global_momentum") if not 0 <= getattr(self, k) < 1]
        if not set(self.adapted) <= set(OPTIONAL_ADAPTERS):
            p.append(f"--phased-lora {self.lora!r}: choose from {', '.join(OPTIONAL_ADAPTERS)} (comma-separated) "
                     "or none")
        if self.chunk_tokens > self.seq_len:
            p.append(f"--phased-chunk-tokens {self.chunk_tokens} must be at most --phased-seq-len {self.seq_len}")
        return p

    @property
    def adapted(self) -> list[str]:
        """The optional adapters chosen by `lora`."""
        return [] if self.lora.strip() == "none" else [a.strip() for a in self.lora.split(",") if a.strip()]


@dataclass(frozen=True)
class Batch:
    queue_index: int  # its place in the queue (longest batches first)
    order: int  # its index among the batches of length-sorted documents (the record's orig_batch_idx)
    docs: list[int]  # document indices, shortest first


@dataclass(frozen=True)
class PhasedSums(Sums):
    documents: list[dict] = field(default_factory=list)  # {"start", "nll_sum", "tokens", "bytes"} in stream order
    phases: list[dict] = field(default_factory=list)  # per phase (the last: after the last global SGD)


def find_documents(tokens: Tokens) -> list[tuple[int, int]]:
    """(start, length) of each document: tokens[start:start+length] from its BOS through the next BOS.
    A stream ending in a BOS leaves that BOS, which has no target, out."""
    bos = np.flatnonzero(np.asarray(tokens) == BOS_ID)
    ends = np.append(bos[1:] + 1, len(tokens))
    return [(int(s), int(e - s)) for s, e in zip(bos, ends) if e - s >= 2]


def batch_queue(lengths: Sequence[int], batch_docs: int) -> list[Batch]:
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [by_length[i:i + batch_docs] for i in range(0, len(by_length), batch_docs)]
    queue = sorted(range(len(batches)), key=lambda b: -lengths[batches[b][-1]])
    return [Batch(q, b, batches[b]) for q, b in enumerate(queue)]


def phase_boundaries(n_docs: int, cfg: PhasedTTTConfig) -> list[int]:
    prefix = min(n_docs, cfg.prefix_docs)
    return [prefix * (p + 1) // cfg.num_phases for p in range(cfg.num_phases)] if prefix else []


def phase_ends(queue: Sequence[Batch], boundaries: Sequence[int]) -> list[int]:
    """Queue index of the batch after which each phase's global SGD runs (phases never reached are left out)."""
    ends, scored = [], 0
    for batch in queue:
        scored += len(batch.docs)
        if len(ends) < len(boundaries) and scored >= boundaries[len(ends)]:
            ends.append(batch.queue_index)
    return ends


def global_sgd_documents(queue: Sequence[Batch], end: int, boundary: int) -> list[int]:
    """The documents of a phase's SGD: those of queue batches 0..end by (batch order, position), the first
    `boundary` of them."""
    scored = sorted((b.order, pos, doc) for b in queue[:end + 1] for pos, doc in enumerate(b.docs))
    return [doc for _, _, doc in scored[:boundary]]


def chunk_window(chunk: int, n_pred: int, n_chunks: int, chunk_tokens: int, seq_len: int) -> tuple[int, int, int, int]:
    """(window start, window length, offset of the chunk's first target in the window, chunk length), in a
    document's prediction indices (prediction k is target start + 1 + k): the window ends at the chunk's end."""
    end = n_pred if chunk == n_chunks - 1 else (chunk + 1) * chunk_tokens
    start = max(0, end - seq_len)
    return start, end - start, chunk * chunk_tokens - start, end - chunk * chunk_tokens


def document_chunks(length: int, chunk_tokens: int) -> int:
    """Chunks of a document of `length` tokens (length − 1 targets)."""
    return -(-(length - 1) // chunk_tokens)


def chunk_width(chunk: int, cfg: PhasedTTTConfig) -> int:
    """Columns of a batch's forward for `chunk`: every window of a chunk that trains has this width (a
    document's last window may be shorter), the record's `_compute_chunk_window(c, (c+1)·C, c+1, …)`."""
    return min((chunk + 1) * cfg.chunk_tokens, cfg.seq_len)


def phased_ttt(model: GPT, tokens: Tokens, tables: TargetBytes, ctx: DistContext, loops: int, cfg: PhasedTTTConfig,
               progress: Progress | None = None, per_target: bool = False) -> PhasedSums:
    """Score `tokens` by phased LoRA TTT. Mutates the model's weights (the global phases): the caller
    restores them. requires_grad flags and train/eval mode are restored here."""
    problems = cfg.problems()
    if problems:
        raise ValueError("bad phased TTT settings: " + "; ".join(problems))
    docs = find_documents(tokens)
    if not docs:
        raise ValueError("phased TTT needs a BOS-separated validation stream; this one holds no document")
    queue = batch_queue([length for _, length in docs], cfg.batch_docs)
    boundaries = phase_boundaries(len(docs), cfg)
    ends = phase_ends(queue, boundaries)
    run = _Run(model, tokens, tables, ctx, loops, cfg, len(docs), progress, per_target)
    lanes = [_Lane(lane, run) for lane in range(ctx.rank, cfg.lanes, ctx.world_size)]
    segments = list(zip([0] + [e + 1 for e in ends], ends + [len(queue) - 1]))
    with _trainable(model):
        for phase, (first, last) in enumerate(segments):
            for lane in lanes:  # independent within a phase: one after another
                lane.score_phase([b for b in queue[first:last + 1] if b.queue_index % cfg.lanes == lane.index], docs)
            if phase < len(ends) and last + 1 < len(queue):  # a global SGD that nothing would use is skipped
                chosen = global_sgd_documents(queue, last, boundaries[phase])
                run.check_scored(chosen, queue[:last + 1], cfg.lanes)
                global_sgd(model, torch.cat([torch.as_tensor(_ints(tokens[s:s + n])) for s, n in
                                             (docs[i] for i in chosen)]), cfg, ctx, loops)
    return run.sums(docs, queue, segments)


def _ints(tokens: Tokens) -> np.ndarray | Tensor:
    return tokens.astype(np.int64) if isinstance(tokens, np.ndarray) else tokens.long().cpu()


class _Lane:
    """A lane's generator of A, and its batches of a phase scored with one adapter set carried from batch to
    batch (A warm)."""

    def __init__(self, index: int, run: "_Run"):
        self.index, self.run = index, run
        self.generator = torch.Generator().manual_seed(run.cfg.seed + index)

    def score_phase(self, batches: Sequence[Batch], docs: list[tuple[int, int]]) -> None:
        lora = self._new(self.run.cfg.batch_docs)  # a new phase: new adapters (the record draws them even if unused)
        for batch in batches:
            if len(batch.docs) == lora.batch:
                lora.zero_b()
                self.run.score_batch(batch, [docs[i] for i in batch.docs], lora)
            else:  # a batch of another size: its own adapters, the lane's stay
                self.run.score_batch(batch, [docs[i] for i in batch.docs], self._new(len(batch.docs)))

    def _new(self, n_docs: int) -> DocumentLoRA:
        run, cfg = self.run, self.run.cfg
        return DocumentLoRA(n_docs, run.model.cfg, run.slots, cfg.lora_rank, cfg.lora_alpha, self.generator,
                            *(name in cfg.adapted for name in OPTIONAL_ADAPTERS)).to(run.ctx.device)


class _Run:
    """One rank's scoring state: the sums per document (nll, targets, bytes) and per phase."""

    def __init__(self, model: GPT, tokens: Tokens, tables: TargetBytes, ctx: DistContext, loops: int,
                 cfg: PhasedTTTConfig, n_docs: int, progress: Progress | None, per_target: bool):
        self.model, self.tokens, self.tables, self.ctx, self.loops, self.cfg = model, tokens, tables, ctx, loops, cfg
        self.slots = len(layer_sequence(model.cfg, loops))
        self.progress = progress
        self.stream = torch.as_tensor(_ints(tokens), device=ctx.device)  # (n,) int64
        self.per_doc = torch.zeros(n_docs, 3, dtype=torch.float64, device=ctx.device)  # [Σ nll, targets, bytes]
        self.scored = np.zeros(n_docs, dtype=bool)  # documents this rank has scored to the end
        self.target_nll = torch.zeros(len(tokens), dtype=torch.float64, device=ctx.device) if per_target else None

    def score_batch(self, batch: Batch, docs: list[tuple[int, int]], lora: DocumentLoRA) -> None:
        cfg, device = self.cfg, self.ctx.device
        n_pred = [length - 1 for _, length in docs]
        n_chunks = [document_chunks(length, cfg.chunk_tokens) for _, length in docs]
        rows = torch.tensor(batch.docs, device=device)
        opt = torch.optim.AdamW(lora.parameters(), lr=cfg.lora_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                weight_decay=cfg.weight_decay, fused=device.type == "cuda")
        for chunk in range(max(n_chunks)):
            windows = [chunk_window(chunk, n, c, cfg.chunk_tokens, cfg.seq_len) if chunk < c else (0, 0, 0, 0)
                       for n, c in zip(n_pred, n_chunks)]
            # every window of a chunk that trains has this shape; a document's last window may be shorter
            width = chunk_width(chunk, cfg)
            train_offset = chunk * cfg.chunk_tokens - max(0, (chunk + 1) * cfg.chunk_tokens - cfg.seq_len)
            x, y, first = self._rows(docs, windows, width)
            trains = torch.tensor([chunk < c - 1 for c in n_chunks], dtype=torch.float32, device=device)  # (N,)
            with torch.set_grad_enabled(bool(trains.any())):
                nll = self._forward(x, y, lora)  # (N, width) float32
            self._add_scores(rows, windows, x, y, first, nll.detach())
            for step in range(cfg.grad_steps if trains.any() else 0):
                if step > 0:
                    nll = self._forward(x, y, lora)
                opt.zero_grad(set_to_none=True)
                (nll[:, train_offset:train_offset + cfg.chunk_tokens].mean(dim=-1) * trains).sum().backward()
                opt.step()
        self.scored[batch.docs] = True

    def _rows(self, docs: list[tuple[int, int]], windows: list[tuple[int, int, int, int]],
              width: int) -> tuple[Tensor, Tensor, Tensor]:
        """(N, width) inputs and targets of each document's window, zero past its length; (N,) stream position of
        each row's first target."""
        device = self.ctx.device
        first = torch.tensor([s + w[0] + 1 for (s, _), w in zip(docs, windows)], device=device)  # (N,)
        columns = torch.arange(width + 1, device=device)
        index = (first[:, None] - 1 + columns).clamp_(max=self.stream.numel() - 1)  # (N, width + 1)
        lengths = torch.tensor([w[1] for w in windows], device=device)
        valid = columns[None, :width] < lengths[:, None]  # (N, width)
        rows = self.stream[index]
        return torch.where(valid, rows[:, :-1], 0), torch.where(valid, rows[:, 1:], 0), first

    def _forward(self, x: Tensor, y: Tensor, lora: DocumentLoRA) -> Tensor:
        with autocast(self.ctx.device):  # causal over the window: no BOS inside it but its first token
            return self.model(x, y, loops=self.loops, reduction="none", documents=False, lora=lora)

    def _add_scores(self, rows: Tensor, windows: list[tuple[int, int, int, int]], x: Tensor, y: Tensor,
                    first: Tensor, nll: Tensor) -> None:
        device = self.ctx.device
        offsets = torch.tensor([w[2] for w in windows], device=device)[:, None]  # (N, 1)
        counts = torch.tensor([w[3] for w in windows], device=device)[:, None]
        columns = torch.arange(x.size(1), device=device)[None, :]
        scored = (columns >= offsets) & (columns < offsets + counts)  # (N, width)
        n_bytes = torch.where(scored, self.tables.row_bytes(x, y, first), 0).double()
        sums = torch.stack((torch.where(scored, nll.double(), 0.0).sum(1), counts[:, 0].double(), n_bytes.sum(1)), 1)
        self.per_doc.index_add_(0, rows, sums)
        if self.target_nll is not None:
            self.target_nll[(first[:, None] + columns)[scored]] = nll.double()[scored]
        if self.progress is not None:
            self.progress.update(int(counts.sum()))

    def check_scored(self, chosen: Sequence[int], batches: Sequence[Batch], lanes: int) -> None:
        """A global phase trains only on documents already scored: this rank checks those of its own lanes."""
        mine = {doc for b in batches if b.queue_index % lanes % self.ctx.world_size == self.ctx.rank for doc in b.docs}
        unscored = [doc for doc in chosen if doc in mine and not self.scored[doc]]
        if unscored:
            raise RuntimeError(f"a global TTT phase would train on {len(unscored)} document(s) not yet scored")

    def sums(self, docs: list[tuple[int, int]], queue: Sequence[Batch], segments: list[tuple[int, int]]) -> PhasedSums:
        all_reduce_sum_(self.per_doc)  # each document was scored by exactly one rank
        if self.target_nll is not None:
            all_reduce_sum_(self.target_nll)
        per_doc = self.per_doc.cpu()
        nll, targets, n_bytes = per_doc.sum(0).tolist()
        documents = [{"start": start, "nll_sum": row[0], "tokens": int(row[1]), "bytes": int(row[2])}
                     for (start, _), row in zip(docs, per_doc.tolist())]
        phases = []
        for first, last in segments:
            in_phase = [doc for b in queue[first:last + 1] for doc in b.docs]
            part = per_doc[in_phase].sum(0).tolist() if in_phase else [0.0, 0.0, 0.0]
            phases.append({"nll_sum": part[0], "tokens": int(part[1]), "bytes": int(part[2]),
                           "documents": len(in_phase), "batches": last + 1 - first})
        return PhasedSums(nll, int(targets), int(n_bytes), self.target_nll, documents, phases)


def sgd_chunk_sequences(n_targets: int, cfg: PhasedTTTConfig) -> list[int]:
    """Sequences of global_seq_len in each chunk of global_chunk_tokens targets that a phase's SGD trains
    on: every chunk but the last."""
    n_chunks = -(-n_targets // cfg.global_chunk_tokens)
    return [(min((c + 1) * cfg.global_chunk_tokens, n_targets) - c * cfg.global_chunk_tokens) // cfg.global_seq_len
            for c in range(n_chunks - 1)]


def global_sgd(model: GPT, tokens: Tensor, cfg: PhasedTTTConfig, ctx: DistContext, loops: int) -> None:
    """SGD on every weight over `tokens` (the scored documents, concatenated): chunks of global_chunk_tokens,
    the last one not trained on; in each, steps of up to global_batch_seqs sequences of global_seq_len, each
    step one packed row, attention inside documents (the model's doc_max_len; without it, rows of
    global_seq_len); learning rate cosine over the chunks, momentum, norm clip, global_epochs passes.

    Rank independence: a step's row is cut before BOS tokens into one piece per rank (no attention, and no
    SmearGate, crosses a BOS), and each rank's loss is its piece's Σ nll over the row's target count, so the
    summed gradient is the row's mean loss's."""
    chunk_seqs = sgd_chunk_sequences(tokens.numel() - 1, cfg)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=cfg.global_lr, momentum=cfg.global_momentum)
    for p in params:
        p.requires_grad_(True)
    model.train()
    for chunk, n_seqs in enumerate(chunk_seqs):
        lo = chunk * cfg.global_chunk_tokens
        for group in opt.param_groups:
            group["lr"] = ttt_lr(cfg.global_lr, chunk, len(chunk_seqs) + 1)  # score-first TTT's cosine over chunks
        for _ in range(cfg.global_epochs):
            for s in range(0, n_seqs, cfg.global_batch_seqs):
                e = min(s + cfg.global_batch_seqs, n_seqs)
                row = tokens[lo + s * cfg.global_seq_len: lo + e * cfg.global_seq_len + 1].to(ctx.device)
                opt.zero_grad(set_to_none=True)
                _row_loss(model, row, cfg.global_seq_len, ctx, loops).backward()
                for p in params:  # a missing gradient is zero on every rank, so all reduce the same tensors
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                all_reduce_gradients(params, ctx, mean=False)
                if cfg.global_grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, cfg.global_grad_clip)
                opt.step()
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    model.eval()


def _row_loss(model: GPT, row: Tensor, seq_len: int, ctx: DistContext, loops: int) -> Tensor:
    """This rank's share of the mean nll of one packed row (row[:-1] predicts row[1:])."""
    x, y = row[:-1], row[1:]
    n = x.numel()
    if model.cfg.doc_max_len:
        # cut only before a BOS: the SmearGate reads across a cut every doc_max_len, never across a BOS
        cut_at = torch.cat((torch.zeros(1, dtype=torch.long), (x[1:] == BOS_ID).nonzero()[:, 0].cpu() + 1))
        cuts = [0] + [int(cut_at[torch.searchsorted(cut_at, n * r // ctx.world_size, right=True) - 1])
                      for r in range(1, ctx.world_size)] + [n]
        lo, hi = cuts[ctx.rank], cuts[ctx.rank + 1]
        x, y = x[None, lo:hi], y[None, lo:hi]
    else:
        n_rows = n // seq_len
        lo, hi = n_rows * ctx.rank // ctx.world_size, n_rows * (ctx.rank + 1) // ctx.world_size
        x, y = x.view(n_rows, seq_len)[lo:hi], y.view(n_rows, seq_len)[lo:hi]
    if x.numel() == 0:  # nothing here: a zero loss that still joins the gradient all-reduce
        return sum(p.sum() for p in model.parameters()) * 0.0
    with autocast(ctx.device):
        return model(x, y, loops=loops, reduction="none").sum() / n


@contextlib.contextmanager
def _trainable(model: nn.Module) -> Iterator[None]:
    """Base weights frozen for the adapters' steps (`global_sgd` unfreezes them while it runs); flags and mode
    restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
