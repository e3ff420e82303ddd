"""The 2026-04-27 record's plain evaluation (its `eval_val`), as golfctl's `--packed` eval mode.

The record cuts the validation targets into sequences of seq_len (2,048). Each of its W ranks
(8) takes the contiguous range of sequences [total·r/W, total·(r+1)/W), truncates it to a
multiple of `row_seqs` (its val_batch_tokens / (W · seq_len) = 524,288 / 8 / 2,048 = 32), and
scores it `row_seqs` sequences at a time as one packed row of row_seqs · seq_len (65,536)
tokens. In a row, attention stays inside documents (the model's `doc_max_len`: cut at each BOS
and every doc_max_len tokens), rotary positions count along the row, and every target is
scored, BOS included (a BOS target is worth 0 bytes in a CaseOps sidecar). The sequences a
truncation drops are never scored.

golfctl emulates the record's W whatever the number of ranks it runs on, so its number does not
depend on the GPU count and equals the record's 8-GPU number; its own ranks share the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from golfctl.scoring import Window


@dataclass(frozen=True)
class PackedConfig:
    batch_tokens: int = field(default=524_288, metadata={
        "help": "The record's val_batch_tokens: tokens per step over all of its ranks."})
    world_size: int = field(default=8, metadata={
        "help": "The record's rank count, emulated: it decides the ranges and their truncation."})

    def problems(self) -> list[str]:
        return [f"--packed-{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
                for k in ("batch_tokens", "world_size") if getattr(self, k) < 1]

    def row_seqs(self, seq_len: int) -> int:
        """Sequences per packed row: the record's local_batch_seqs."""
        return self.batch_tokens // self.world_size // seq_len


def packed_rows(n_tokens: int, seq_len: int, cfg: PackedConfig) -> list[list[Window]]:
    """Per emulated rank, its packed rows in stream order: windows of row_seqs · seq_len inputs
    that score every target. Consecutive ranks' rows leave a gap where a range was truncated."""
    row_seqs = cfg.row_seqs(seq_len)
    if row_seqs < 1:
        raise ValueError(f"batch_tokens {cfg.batch_tokens} gives no sequence of {seq_len} per rank of "
                         f"{cfg.world_size}")
    total = (n_tokens - 1) // seq_len
    ranges = []
    for rank in range(cfg.world_size):
        first, last = total * rank // cfg.world_size, total * (rank + 1) // cfg.world_size
        last = first + (last - first) // row_seqs * row_seqs
        row = row_seqs * seq_len
        ranges.append([Window(s * seq_len, s * seq_len + row, s * seq_len + 1)
                       for s in range(first, last, row_seqs)])
    return ranges
