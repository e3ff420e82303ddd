"""Bits-per-byte accounting by the challenge's rule (docs/design.md, "BPB").

Each target token is worth the UTF-8 bytes of its piece without the leading `▁`, plus one
byte for that `▁` unless the previous token is a boundary; byte-fallback pieces are worth 1;
control, unknown and unused pieces are worth 0 and are boundaries. The leading space is
counted in exactly one place (`target_bytes`), never in the table as well.

A CaseOps dataset (golfctl/caseops.py) is tokenized from transformed text, so the rule would count
the transformed text's bytes. Its validation split carries a byte sidecar instead (`SidecarBytes`):
target position t is worth sidecar[t], the original text's UTF-8 bytes its token stands for (0 for
BOS and the case operators), as the 2026-04-27 record counts them (its train_gpt.py `eval_val`:
`val_bytes[raw_start + 1 : raw_end]` beside targets `tokens[raw_start + 1 : raw_end]`).

Scoring reads bytes through `row_bytes(x, y, first_targets)` of the device-side counter
(`TorchByteTables` or `TorchSidecarBytes`, made by `.on(device)`), which has what either needs: the
tokens, and each row's position in the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm

from golfctl.tokenizer import SPACE_PIECE


@dataclass(frozen=True)
class ByteTables:
    """Per-token-id lookup tables, each of shape (vocab,)."""

    base_bytes: np.ndarray  # int64: UTF-8 bytes of the piece without its leading ▁
    leading_space: np.ndarray  # bool: the piece starts with ▁ (worth one more byte after a non-boundary)
    boundary: np.ndarray  # bool: control / unknown / unused

    @classmethod
    def from_tokenizer(cls, sp: spm.SentencePieceProcessor) -> "ByteTables":
        vocab = sp.vocab_size()
        base = np.zeros(vocab, dtype=np.int64)
        space = np.zeros(vocab, dtype=bool)
        boundary = np.zeros(vocab, dtype=bool)
        for i in range(vocab):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                boundary[i] = True
            elif sp.is_byte(i):
                base[i] = 1  # one raw byte, whatever its "<0xAB>" spelling
            else:
                piece = sp.id_to_piece(i)
                if piece.startswith(SPACE_PIECE):
                    space[i] = True
                    piece = piece[len(SPACE_PIECE):]
                base[i] = len(piece.encode("utf-8"))
        return cls(base, space, boundary)

    def target_bytes(self, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
        """Bytes of each target given the token before it; same shape as the inputs."""
        prev_ids = np.asarray(prev_ids, dtype=np.int64)
        target_ids = np.asarray(target_ids, dtype=np.int64)
        return self.base_bytes[target_ids] + (self.leading_space[target_ids] & ~self.boundary[prev_ids])

    def stream_bytes(self, tokens: np.ndarray) -> int:
        """Total bytes of every target of a token stream (all tokens but the first)."""
        tokens = np.asarray(tokens)
        if tokens.size < 2:
            return 0
        return int(self.target_bytes(tokens[:-1], tokens[1:]).sum())

    def on(self, device) -> "TorchByteTables":
        return TorchByteTables(self, device)


@dataclass(frozen=True)
class SidecarBytes:
    """Bytes per stream position from a byte sidecar (module docstring): target position t is worth
    bytes[t] whatever the tokens are."""

    bytes: np.ndarray  # (n,) uint16, aligned with the token stream it was made with

    def stream_bytes(self, tokens: np.ndarray) -> int:
        """Total bytes of every target of `tokens`, the first len(tokens) positions of the sidecar's stream."""
        if len(tokens) > self.bytes.size:
            raise ValueError(f"a stream of {len(tokens)} tokens is longer than the sidecar's {self.bytes.size}")
        return int(self.bytes[1:len(tokens)].sum(dtype=np.int64))

    def on(self, device) -> "TorchSidecarBytes":
        return TorchSidecarBytes(self, device)


def bits_per_byte(nll_sum_nats: float, n_bytes: int) -> float:
    """(Σ nll / ln 2) / Σ bytes, with the sums taken in float64 by the caller."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs a positive byte count")
    return float(nll_sum_nats) / math.log(2.0) / float(n_bytes)


class TorchByteTables:
    """The same tables on a torch device, for counting bytes next to the loss."""

    def __init__(self, tables: ByteTables, device):
        import torch

        self.base_bytes = torch.as_tensor(tables.base_bytes, device=device)
        self.leading_space = torch.as_tensor(tables.leading_space, device=device)
        self.boundary = torch.as_tensor(tables.boundary, device=device)

    def target_bytes(self, prev_ids, target_ids):
        return self.base_bytes[target_ids] + (self.leading_space[target_ids] & ~self.boundary[prev_ids])

    def row_bytes(self, x, y, first_targets):
        """(rows, T) bytes of targets y (rows, T) after inputs x; the rule needs no positions (`first_targets`)."""
        return self.target_bytes(x, y)


class TorchSidecarBytes:
    """A byte sidecar on a torch device (int32: torch indexes no uint16), for counting bytes next to the loss."""

    def __init__(self, sidecar: SidecarBytes, device):
        import torch

        self.bytes = torch.as_tensor(sidecar.bytes.astype(np.int32), device=device)

    def row_bytes(self, x, y, first_targets):
        """(rows, T) bytes of the targets of rows whose first target is at stream position first_targets (rows,).
        A position past the stream (a padded or filler row, warm-up's random stream) reads the last entry:
        the caller scores none of them."""
        import torch

        positions = first_targets[:, None] + torch.arange(y.shape[1], device=first_targets.device)
        return self.bytes[positions.clamp_(max=self.bytes.numel() - 1)]


TargetBytes = TorchByteTables | TorchSidecarBytes  # what scoring counts bytes with
