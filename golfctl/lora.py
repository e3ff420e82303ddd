"""Batched LoRA adapters for phased test-time training (golfctl/phased_ttt.py): one adapter per document
of a batch, as the 2026-04-27 record's `BatchedLinearLoRA` / `BatchedTTTLoRA` (its train_gpt.py
lines 1636–1715).

Row b of a batch holds document b's adapter: delta(x)[b] = (x[b] A[b]ᵀ) B[b]ᵀ · alpha/rank, with A
(N, rank, in) drawn uniform in ±1/√in and B (N, out, rank) zero, so a new adapter changes nothing
until it is trained. `DocumentLoRA` holds one such adapter per block application ("slot": every
application of the layer sequence, looped blocks once per application) for q, v and optionally k,
the attention output and the MLP, plus one on the head, and serves them to `GPT.forward(lora=…)`.

A is drawn from the caller's `torch.Generator`, in the record's order (head, then per slot q, v, k,
MLP, output): the record draws from the global CPU RNG, so one generator seeded with s gives the
A's the record gets after `torch.manual_seed(s)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from golfctl.config import ModelConfig
from golfctl.model import SlotAdapters


class BatchedLoRA(nn.Module):
    """(N, T, in) → (N, T, out): a rank-`rank` delta per row, scaled by alpha/rank."""

    def __init__(self, batch: int, in_features: int, out_features: int, rank: int, alpha: float,
                 generator: torch.Generator):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.A = nn.Parameter(torch.empty(batch, rank, in_features).uniform_(-bound, bound, generator=generator))
        self.B = nn.Parameter(torch.zeros(batch, out_features, rank))
        self.scale = alpha / rank  # the output scale does not move with the rank (standard LoRA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x @ self.A.transpose(1, 2)) @ self.B.transpose(1, 2)) * self.scale


class DocumentLoRA(nn.Module):
    """The adapters of a batch of `batch` documents for a model of `cfg` run over `slots` block applications."""

    def __init__(self, batch: int, cfg: ModelConfig, slots: int, rank: int, alpha: float, generator: torch.Generator,
                 k: bool = True, mlp: bool = True, o: bool = True):
        super().__init__()
        self.batch = batch
        d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim

        def adapters(out_features: int, wanted: bool = True) -> nn.ModuleList | None:
            return nn.ModuleList(BatchedLoRA(batch, d, out_features, rank, alpha, generator)
                                 for _ in range(slots)) if wanted else None

        # created in the record's order, which is the order A is drawn in
        self.head_lora = BatchedLoRA(batch, d, cfg.vocab_size, rank, alpha, generator)
        self.q, self.v, self.k, self.mlp, self.o = adapters(d), adapters(kv), adapters(kv, k), adapters(d, mlp), \
            adapters(d, o)
        self._slots = [SlotAdapters(*(None if group is None else group[i] for group in (self.q, self.k, self.v,
                                                                                       self.o, self.mlp)))
                       for i in range(slots)]

    def slot(self, i: int) -> SlotAdapters:
        return self._slots[i]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_lora(h)

    def zero_b(self) -> None:
        """A new batch of documents starts from B = 0 (no change to the model), keeping A warm."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, BatchedLoRA):
                    module.B.zero_()
