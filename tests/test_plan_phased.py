"""`eval --plan --ttt --ttt-mode phased`: phased TTT's work counted by hand, and the rates that give
the 2026-04-27 record's logged seconds."""

from __future__ import annotations

import dataclasses

import pytest
from cli_helpers import golfctl

from golfctl.phased_ttt import PhasedTTTConfig
from golfctl.plan import PassWork, RecordPhasedEval, phased_rates, phased_work, record_document_lengths, seconds

TINY = PhasedTTTConfig(batch_docs=2, chunk_tokens=4, seq_len=8, prefix_docs=0, lanes=1, global_chunk_tokens=8,
                       global_seq_len=4, global_batch_seqs=1)


def test_adapter_work_by_hand():
    """Documents of 5, 9 and 13 tokens (4, 8, 12 targets): queue [doc 2], then [docs 0, 1]. Doc 2's
    chunks run on windows of 4, 8 and 8 inputs, training after the first two; docs 0 and 1 run
    together on windows of 4 (training: doc 1 has a later chunk) and 8 (forward only)."""
    adapters, sgd = phased_work([5, 9, 13], TINY, world_size=1, factor=1.0, row_len=1)
    assert adapters == PassWork("phased", 3, 8 + 2 * 8, 2, 3, 4 + 8 + 2 * 4)
    assert sgd == PassWork("phase SGD", 0, 0, 0, 0, 0)


def test_phase_sgd_by_hand():
    """One phase at 2 documents: after queue batch 1 (3 scored), SGD on docs 0 and 1 (14 tokens) in
    chunks of 8: the last chunk is skipped, the first holds 2 sequences of 4, one step each."""
    _, sgd = phased_work([5, 9, 13], dataclasses.replace(TINY, prefix_docs=2, num_phases=1), world_size=1,
                         factor=1.0, row_len=1)
    assert sgd == PassWork("phase SGD", 0, 0, 1, 2, 8)


def test_lanes_share_batches_among_ranks():
    lengths = [20] * 8  # four equal batches of two
    one, _ = phased_work(lengths, dataclasses.replace(TINY, lanes=4), world_size=1, factor=1.0, row_len=1)
    four, _ = phased_work(lengths, dataclasses.replace(TINY, lanes=4), world_size=4, factor=1.0, row_len=1)
    assert four.train_rows * 4 == one.train_rows and four.forward_rows * 4 == one.forward_rows


def test_the_records_documents_and_seconds():
    record = RecordPhasedEval()
    lengths = record_document_lengths(record)
    assert len(lengths) == 50_000 and sum(lengths) == pytest.approx(record.val_tokens, abs=50)
    from golfctl.config import TrainConfig, resolve_config
    from golfctl.plan import forward_flops_per_token, lora_factor

    cfg = resolve_config(TrainConfig, "frontier")
    phased = PhasedTTTConfig()
    works = phased_work(lengths, phased, 8, lora_factor(cfg, cfg.resolved_eval_loops, phased), phased.seq_len)
    flops = forward_flops_per_token(cfg, phased.seq_len, cfg.resolved_eval_loops)
    estimates = [seconds(w, phased.seq_len, flops, r) for w, r in zip(works, phased_rates(record))]
    assert estimates == pytest.approx([record.seconds - sum(record.phase_seconds), sum(record.phase_seconds)])


def test_cli_prints_the_estimate_beside_the_records_log():
    result = golfctl("eval", "--plan", "--preset", "frontier", "--max-val-tokens", 47_851_520, "--world-size", 8,
                     "--ttt", "--ttt-mode", "phased", "--no-plain", "--no-sliding")
    assert result.returncode == 0, result.stderr
    assert "est. 508.8 s; the record logged 508.8 s, plus 137.6 s of compile warm-up" in result.stdout
