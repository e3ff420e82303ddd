"""The validation split as every stage scores it: tokens and byte tables, checked before any work.

`load_validation_set` refuses, in the first seconds, a tokenizer that is not the dataset's, a
vocabulary that is not the model's, a token id outside the vocabulary, and byte tables that do
not give the split's recorded byte count (the decoded text's UTF-8 length): each of these
would otherwise surface only after minutes of scoring, or never.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golfctl.bpb import ByteTables, TorchByteTables
from golfctl.dataset import Dataset, resolve_tokenizer
from golfctl.distributed import single_process
from golfctl.errors import UserError
from golfctl.fileio import sha256_file
from golfctl.scoring import Sums, score_plain
from golfctl.tokenizer import load_tokenizer
from golfctl.weights import Weights, build_model


@dataclass(frozen=True)
class ValidationSet:
    tokens: np.ndarray  # the whole validation stream (uint16)
    tables: TorchByteTables
    tokenizer: Path  # the .model file the tables come from


def load_validation_set(dataset: Dataset, tokenizer: Path | None, vocab_size: int, min_tokens: int,
                        device: torch.device) -> ValidationSet:
    """The validation stream and byte tables, after checking the tokenizer against data and model."""
    path = resolve_tokenizer(dataset, tokenizer, vocab_size)
    sp = load_tokenizer(path)
    if dataset.tokenizer_sha256 is not None and sha256_file(path) != dataset.tokenizer_sha256:
        raise UserError(f"tokenizer {path} is not the one {dataset.root} was tokenized with (sha256 differs)")
    if sp.vocab_size() != vocab_size:
        raise UserError(f"the model's vocab_size {vocab_size} does not match the tokenizer's {sp.vocab_size()}; "
                        f"use --set vocab_size={sp.vocab_size()} or a matching dataset")
    split = dataset.splits["val"]
    if split.tokens <= min_tokens:
        raise UserError(f"{dataset.root} has {split.tokens:,} validation tokens, not enough for one window of "
                        f"{min_tokens}; tokenize with more --val-docs")
    tokens = split.load_tokens()
    top = int(tokens.max())
    if top >= vocab_size:
        raise UserError(f"{dataset.root}'s validation shards hold token id {top}, outside the vocabulary of "
                        f"{vocab_size}; the shards were made with another tokenizer: retokenize or pass the right "
                        "--tokenizer")
    tables = ByteTables.from_tokenizer(sp)
    counted = tables.stream_bytes(tokens)
    if split.bytes is not None and counted != split.bytes:
        raise UserError(f"tokenizer {path} counts {counted:,} bytes in {dataset.root}'s validation split, whose text "
                        f"has {split.bytes:,}: the shards were made with another tokenizer; retokenize or pass the "
                        "right --tokenizer")
    return ValidationSet(tokens, TorchByteTables(tables, device), path)


def score_weights(weights: Weights, val: ValidationSet, device: torch.device) -> Sums:
    """The plain score (golfctl/scoring.py) of `weights` on `val` at their evaluation depth, in one process."""
    config = weights.config
    return score_plain(build_model(weights, device), val.tokens, val.tables, config.train_seq_len,
                       single_process(device), config.resolved_eval_loops)
