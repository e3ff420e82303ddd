"""A small shared scoring problem: a deterministic tiny GPT, a random stream and synthetic byte tables."""

from __future__ import annotations

import numpy as np
import torch

from golfctl.bpb import ByteTables, TorchByteTables
from golfctl.config import ModelConfig
from golfctl.distributed import single_process
from golfctl.model import GPT
from golfctl.scoring import Scorer

VOCAB, SEQ_LEN, STRIDE, CHUNK = 64, 32, 8, 128
N_TOKENS = 700  # 699 targets: 6 chunks of 128 (the last one short), 4 training sequences per full chunk
CPU = torch.device("cpu")
ONE = single_process(CPU)


def tiny_model() -> GPT:
    """A deterministic GPT whose outputs depend on context (the zero-initialised projections would
    make every block the identity and the model a bigram table)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, model_dim=32, num_layers=2, num_heads=4, num_kv_heads=2))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def stream(n: int = N_TOKENS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)


def byte_tables() -> ByteTables:
    """Synthetic tables: ids 0-2 are boundaries worth 0 bytes, the rest 1-4 bytes, some with a leading space."""
    rng = np.random.default_rng(2)
    boundary = np.arange(VOCAB) < 3
    base = np.where(boundary, 0, rng.integers(1, 5, VOCAB)).astype(np.int64)
    return ByteTables(base, (rng.random(VOCAB) < 0.4) & ~boundary, boundary)


TABLES = TorchByteTables(byte_tables(), CPU)


def scorer(model, batch_seqs: int = 5, ctx=ONE, seq_len: int = SEQ_LEN) -> Scorer:
    return Scorer(model, TABLES, ctx, 1, batch_seqs, seq_len)
