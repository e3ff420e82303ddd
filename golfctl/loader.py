"""Training batches from memory-mapped shards: deterministic, rank-disjoint, resumable by step.

The training stream (all train shards concatenated) is cut into chunks of
`train_batch_tokens + 1` tokens, one per optimizer step (the extra token supplies the last
target). Each epoch visits the chunks in a seeded random order, so the batch of step `s`
is a pure function of (seed, s): resuming needs only the step counter, and no rank ever
reads another rank's tokens. A step's chunk is split into `grad_accum` micro-batches;
rank r takes micro-batches r, r + W, r + 2W, … so 1, 2, 4 or 8 ranks see the same global
batch and train the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from golfctl.dataset import Split
from golfctl.errors import UserError


def micro_batch(tokens: torch.Tensor, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (n, seq_len), from n·seq_len + 1 int64 CPU tokens: the one way a
    training micro-batch is laid out (views of one device tensor), so that the compile warm-up,
    which calls this on random tokens, sees the shapes and strides of the timed loop."""
    tokens = tokens.to(device, non_blocking=True)
    return tokens[:-1].view(-1, seq_len), tokens[1:].view(-1, seq_len)


class TokenStream:
    """Random access to a split's concatenated shards without loading them into memory. Every shard is
    checked once, here (sha256 against the manifest, ids below `vocab_size` or the split's own vocab:
    `Split.load_shards`), so a damaged or foreign shard stops the run before any step."""

    def __init__(self, split: Split, vocab_size: int | None = None):
        self.shards = split.load_shards(vocab_size)
        self.starts = np.cumsum([0] + [s.size for s in self.shards])
        self.size = int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        filled = 0
        index = int(np.searchsorted(self.starts, start, side="right")) - 1
        while filled < length:
            offset = start + filled - int(self.starts[index])
            take = min(length - filled, self.shards[index].size - offset)
            out[filled:filled + take] = self.shards[index][offset:offset + take]
            filled += take
            index += 1
        return out


@dataclass(frozen=True)
class LoaderState:
    """What a checkpoint records: the loader is a function of these and the step."""

    seed: int
    chunk_tokens: int
    chunks_per_epoch: int

    def as_dict(self) -> dict:
        return {"seed": self.seed, "chunk_tokens": self.chunk_tokens, "chunks_per_epoch": self.chunks_per_epoch}


class TrainBatches:
    def __init__(self, split: Split, batch_tokens: int, seq_len: int, grad_accum: int, seed: int,
                 rank: int, world_size: int, vocab_size: int | None = None):
        if grad_accum % world_size:
            raise UserError(f"grad_accum {grad_accum} is not divisible by the {world_size} ranks; "
                            f"use --set grad_accum=N with N a multiple of {world_size}")
        self.stream = TokenStream(split, vocab_size)
        self.batch_tokens = batch_tokens
        self.seq_len = seq_len
        self.grad_accum = grad_accum
        self.micro_tokens = batch_tokens // grad_accum
        self.rank = rank
        self.world_size = world_size
        chunks = (self.stream.size - 1) // batch_tokens
        if chunks < 1:
            raise UserError(f"the training split has {self.stream.size:,} tokens, fewer than one batch of "
                            f"train_batch_tokens={batch_tokens:,} + 1; use more data or a smaller batch")
        self.state = LoaderState(seed, batch_tokens, chunks)

    def chunk_start(self, step: int) -> int:
        epoch, index = divmod(step, self.state.chunks_per_epoch)
        order = np.random.default_rng([self.state.seed, epoch]).permutation(self.state.chunks_per_epoch)
        return int(order[index]) * self.batch_tokens

    def micro_batches(self, step: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (inputs, targets) micro-batches for `step`, each (micro_tokens/seq_len, seq_len)."""
        start = self.chunk_start(step)
        for micro in range(self.rank, self.grad_accum, self.world_size):
            tokens = torch.from_numpy(self.stream.read(start + micro * self.micro_tokens, self.micro_tokens + 1))
            yield micro_batch(tokens, self.seq_len, device)

    @property
    def local_micro_batches(self) -> int:
        return self.grad_accum // self.world_size
