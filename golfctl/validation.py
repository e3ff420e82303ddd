"""Plain validation: loss and BPB over non-overlapping windows, all ranks taking part."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from golfctl.bpb import ByteTables, TorchByteTables, bits_per_byte
from golfctl.dataset import Dataset, open_dataset
from golfctl.distributed import DistContext, all_reduce_float64
from golfctl.errors import UserError
from golfctl.fileio import sha256_file
from golfctl.tokenizer import load_tokenizer
from golfctl.weights import Weights, build_model

VAL_BATCH_TOKENS = 131_072  # tokens per validation forward


@dataclass(frozen=True)
class ValidationSet:
    tokens: np.ndarray  # the whole validation stream (uint16)
    tables: TorchByteTables


def load_validation_set(dataset: Dataset, tokenizer: Path | None, vocab_size: int, min_tokens: int,
                        device: torch.device) -> ValidationSet:
    """The validation stream and byte tables, after checking the tokenizer against data and model."""
    path = tokenizer or dataset.tokenizer_path
    if path is None:
        raise UserError(f"{dataset.root} has no tokenizer.model; pass --tokenizer with the dataset's .model file")
    sp = load_tokenizer(path)
    if dataset.tokenizer_sha256 is not None and sha256_file(path) != dataset.tokenizer_sha256:
        raise UserError(f"tokenizer {path} is not the one {dataset.root} was tokenized with (sha256 differs)")
    if sp.vocab_size() != vocab_size:
        raise UserError(f"config vocab_size {vocab_size} does not match the tokenizer's {sp.vocab_size()}; "
                        f"use --set vocab_size={sp.vocab_size()} or a matching dataset")
    val = dataset.splits["val"]
    if val.tokens <= min_tokens:
        raise UserError(f"{dataset.root} has {val.tokens:,} validation tokens, not enough for one window of "
                        f"{min_tokens}; tokenize with more --val-docs")
    return ValidationSet(val.load_tokens(), TorchByteTables(ByteTables.from_tokenizer(sp), device))


@dataclass(frozen=True)
class ValResult:
    loss: float  # mean nll in nats per token
    bpb: float
    tokens: int
    bytes: int


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere (bf16 matmuls are far slower on CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def plain_validation(model: nn.Module, tokens: np.ndarray, tables: TorchByteTables, seq_len: int,
                     batch_seqs: int, ctx: DistContext, loops: int) -> ValResult:
    """Score every full window of `seq_len` targets; ranks take disjoint ranges of windows."""
    n_seqs = (tokens.size - 1) // seq_len
    if n_seqs < 1:
        raise ValueError(f"validation split has {tokens.size} tokens, fewer than one window of {seq_len} + 1")
    first, last = n_seqs * ctx.rank // ctx.world_size, n_seqs * (ctx.rank + 1) // ctx.world_size
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=ctx.device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for seq in range(first, last, batch_seqs):
        count = min(batch_seqs, last - seq)
        window = torch.from_numpy(tokens[seq * seq_len: (seq + count) * seq_len + 1].astype(np.int64))
        window = window.to(ctx.device)
        x, y = window[:-1].view(count, seq_len), window[1:].view(count, seq_len)
        with autocast(ctx.device):
            losses = model(x, y, loops=loops, reduction="none")  # (count, seq_len)
        nll += losses.double().sum()
        n_bytes += tables.target_bytes(x, y).double().sum()
    model.train(was_training)
    total_nll, total_bytes = all_reduce_float64([nll.item(), n_bytes.item()], ctx)
    total_tokens = n_seqs * seq_len
    return ValResult(total_nll / total_tokens, bits_per_byte(total_nll, int(total_bytes)), total_tokens,
                     int(total_bytes))



def score_weights(weights: Weights, data: Path, tokenizer: Path | None, device: torch.device) -> ValResult:
    """Plain validation BPB of `weights` at their evaluation depth, in one process."""
    config = weights.config
    val = load_validation_set(open_dataset(data), tokenizer, config.vocab_size, config.train_seq_len, device)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    return plain_validation(build_model(weights, device), val.tokens, val.tables, config.train_seq_len,
                            max(1, VAL_BATCH_TOKENS // config.train_seq_len), ctx, config.resolved_eval_loops)
