"""The validation split as every stage scores it: tokens and byte tables, checked before any work.

`load_validation_set` refuses, in the first seconds, a tokenizer that is not the dataset's, a
vocabulary that is not the model's, a tokenizer that is not the one the model was trained with
(when the model records it), a shard whose sha256 is not the manifest's or that holds a token id
outside the vocabulary (both named, checked while the shards are read: `Split.load_tokens`), and
byte tables that do not give the split's recorded byte count (the decoded text's UTF-8 length):
each of these would otherwise surface only after minutes of scoring, or never.

A CaseOps split (golfctl/caseops.py) is scored through its byte sidecar instead of the tables
(golfctl/bpb.py `SidecarBytes`), with a tokenizer that holds the case operators as pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golfctl import caseops
from golfctl.bpb import ByteTables, SidecarBytes, TargetBytes
from golfctl.dataset import TOKENIZER_NAME, Dataset, resolve_tokenizer
from golfctl.distributed import single_process
from golfctl.errors import UserError
from golfctl.fileio import sha256_file
from golfctl.scoring import Sums, score_plain
from golfctl.tokenizer import check_reserved_pieces, load_tokenizer
from golfctl.weights import Weights, build_model


@dataclass(frozen=True)
class ValidationSet:
    tokens: np.ndarray  # the whole validation stream (uint16)
    tables: TargetBytes  # what each target is worth: byte tables, or a CaseOps split's sidecar
    tokenizer: Path  # the .model file the tables come from
    tokenizer_sha256: str | None = None  # its sha256 (what a checkpoint records as the run's tokenizer)


def load_validation_set(dataset: Dataset, tokenizer: Path | None, vocab_size: int, min_tokens: int,
                        device: torch.device, model_tokenizer_sha256: str | None = None) -> ValidationSet:
    """The validation stream and byte tables, after checking the tokenizer against data and model.

    `model_tokenizer_sha256`: the tokenizer the model was trained with (`Weights.tokenizer_sha256`);
    None (a model that records none) skips that check."""
    path = resolve_tokenizer(dataset, tokenizer, vocab_size)
    sp = load_tokenizer(path)
    digest = sha256_file(path)
    if dataset.tokenizer_sha256 is not None and digest != dataset.tokenizer_sha256:
        raise UserError(f"tokenizer {path} is not the one {dataset.root} was tokenized with (sha256 differs)")
    if sp.vocab_size() != vocab_size:
        raise UserError(f"the model's vocab_size {vocab_size} does not match the tokenizer's {sp.vocab_size()}; "
                        f"use --set vocab_size={sp.vocab_size()} or a matching dataset")
    _check_same_tokenizer(model_tokenizer_sha256, digest, dataset, path, vocab_size)
    if dataset.text_transform == caseops.CASEOPS:
        check_reserved_pieces(sp, caseops.MARKERS, str(path))
    split = dataset.splits["val"]
    if split.tokens <= min_tokens:
        raise UserError(f"{dataset.root} has {split.tokens:,} validation tokens, not enough for one window of "
                        f"{min_tokens}; tokenize with more --val-docs")
    tokens = split.load_tokens(vocab_size)  # each shard's sha256 and ids checked, naming the shard
    sidecar = split.load_target_bytes()  # a CaseOps split's bytes per position; None: the tables' rule
    tables = ByteTables.from_tokenizer(sp) if sidecar is None else SidecarBytes(sidecar)
    counted = tables.stream_bytes(tokens)
    if split.bytes is not None and counted != split.bytes:
        counter = f"tokenizer {path}" if sidecar is None else "the byte sidecar"
        raise UserError(f"{counter} counts {counted:,} bytes in {dataset.root}'s validation split, whose text "
                        f"has {split.bytes:,}: the shards were made with another tokenizer; retokenize or pass the "
                        "right --tokenizer")
    return ValidationSet(tokens, tables.on(device), path, digest)


def check_model_tokenizer(dataset: Dataset, model_tokenizer_sha256: str | None, tokenizer: Path | None = None) -> None:
    """For stages that read a dataset without scoring it (quantize's calibration): refuse a dataset
    whose tokenizer (`tokenizer`, i.e. --tokenizer, else the one its manifest records) is not the one
    the model was trained with. Nothing is checked when either side is unknown."""
    if model_tokenizer_sha256 is None:
        return
    if tokenizer is not None:
        digest, path = sha256_file(tokenizer), Path(tokenizer)
    elif dataset.tokenizer_sha256 is not None:
        digest, path = dataset.tokenizer_sha256, dataset.root / (dataset.manifest["tokenizer"].get("file") or
                                                                 TOKENIZER_NAME)
    else:
        return
    _check_same_tokenizer(model_tokenizer_sha256, digest, dataset, path, dataset.vocab_size)


def _check_same_tokenizer(model_sha256: str | None, digest: str, dataset: Dataset, path: Path,
                          vocab_size: int | None) -> None:
    if model_sha256 is None or digest == model_sha256:
        return
    same = f" of the same vocab size ({vocab_size})" if vocab_size is not None else ""
    raise UserError(f"{dataset.root} is tokenized with {path} (sha256 {digest[:12]}…), not with the tokenizer the "
                    f"model was trained with (sha256 {model_sha256[:12]}…): a different tokenizer{same} gives "
                    "meaningless scores; use the dataset the model was trained on, or one made by `golfctl "
                    "tokenize --tokenizer` with the model's tokenizer")


def score_weights(weights: Weights, val: ValidationSet, device: torch.device) -> Sums:
    """The plain score (golfctl/scoring.py) of `weights` on `val` at their evaluation depth, in one process."""
    config = weights.config
    return score_plain(build_model(weights, device), val.tokens, val.tables, config.train_seq_len,
                       single_process(device), config.resolved_eval_loops)
