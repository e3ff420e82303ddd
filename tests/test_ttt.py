"""Score-first TTT: without learning it is sliding, it changes only later chunks, legality (no
target trained on before it is scored, no score depends on a later token) and 1-rank/2-rank parity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import golfctl.ttt as ttt_module
from golfctl.scoring import sliding_windows
from golfctl.ttt import TTTConfig, chunk_sequences, score_first_ttt, ttt_lr
from ranks import rank_results
from scoring_problem import CHUNK, ONE, SEQ_LEN, STRIDE, VOCAB, scorer, stream, tiny_model

# Non-dividing on purpose: steps of 3 then 1 sequence, so a rank of two sometimes trains on nothing.
# Gradient norms run 1.6-3.2 here: the clip acts on some steps only, so it cannot hide a scaling error.
TTT = TTTConfig(chunk_tokens=CHUNK, epochs=2, lr=0.05, momentum=0.9, grad_clip=2.5, batch_seqs=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def ttt(model, tokens, ctx=ONE, windows=None, params=None, **changes):
    windows = windows or sliding_windows(len(tokens), SEQ_LEN, STRIDE)
    return score_first_ttt(scorer(model, 5, ctx), tokens, windows, dataclasses.replace(TTT, **changes),
                           list(model.parameters()) if params is None else params, per_target=True)


@pytest.mark.parametrize("window_stride, seq_len, changes", [
    (STRIDE, SEQ_LEN, dict(epochs=0)),
    (STRIDE, SEQ_LEN, dict(lr=0.0)),
    (16, 16, dict(epochs=0, chunk_tokens=16)),  # chunks as small as windows: some chunks start none
])
def test_ttt_without_learning_equals_sliding(window_stride, seq_len, changes):
    model, tokens = tiny_model(), stream()
    windows = sliding_windows(len(tokens), seq_len, window_stride)
    sliding = scorer(model, 5).score(tokens, windows, per_target=True)
    result = ttt(model, tokens, windows=windows, **changes)
    assert torch.equal(result.per_target, sliding.per_target)
    assert (result.tokens, result.bytes) == (sliding.tokens, sliding.bytes)
    assert result.nll == pytest.approx(sliding.nll, rel=1e-12)
    chunk_tokens = changes.get("chunk_tokens", CHUNK)
    assert len(result.chunks) == -(-(len(tokens) - 1) // chunk_tokens)
    assert sum(c["tokens"] for c in result.chunks) == len(tokens) - 1


def test_ttt_changes_only_chunks_after_the_first():
    model, tokens = tiny_model(), stream()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.blocks[0].attn_scale
    frozen.requires_grad_(False)
    trained = ttt(model, tokens, params=[p for p in model.parameters() if p is not frozen])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    model.load_state_dict(before)
    baseline = ttt(model, tokens, epochs=0)
    assert trained.chunks[0] == baseline.chunks[0]
    for got, want in zip(trained.chunks[1:], baseline.chunks[1:]):
        assert got["nll_sum"] != want["nll_sum"] and (got["tokens"], got["bytes"]) == (want["tokens"], want["bytes"])
    assert trained.nll < baseline.nll  # the chunks share statistics only by chance, but SGD still fits them
    # the function mutates the weights it trains (restoring them is the caller's job) and nothing else
    assert "tok_emb.weight" in changed and "blocks.0.attn_scale" not in changed
    assert not frozen.requires_grad and all(p.requires_grad and p.grad is None
                                            for p in model.parameters() if p is not frozen)


def test_cosine_learning_rate_and_chunk_sequences():
    assert [ttt_lr(1.0, i, 5) for i in range(5)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0])
    assert ttt_lr(0.3, 0, 1) == 0.3
    # chunk 1 of 128 targets: inputs start at the token before the chunk, 4 whole sequences of 32
    assert chunk_sequences(1, CHUNK, 699, SEQ_LEN) == [128, 160, 192, 224]
    assert chunk_sequences(5, CHUNK, 699, SEQ_LEN) == [640]  # 59 targets left: one sequence, the rest untrained


def test_training_past_the_watermark_raises():
    model, tokens = tiny_model(), stream()
    trainer = ttt_module._ChunkTrainer(scorer(model), tokens, dataclasses.replace(TTT, epochs=1),
                                       list(model.parameters()), SEQ_LEN)
    trainer.train([100 - SEQ_LEN], 100, 0.1)  # targets 69..100: all scored
    with pytest.raises(RuntimeError, match="before it is scored"):
        trainer.train([101 - SEQ_LEN], 100, 0.1)  # target 101 is not


def test_ttt_loop_refuses_a_chunk_not_yet_scored(monkeypatch):
    """A bug that trained on the next chunk is caught in the loop, not after the fact."""
    model, tokens = tiny_model(), stream()
    monkeypatch.setattr(ttt_module, "chunk_sequences", lambda i, c, last, t: chunk_sequences(i + 1, c, last, t))
    with pytest.raises(RuntimeError, match="before it is scored"):
        ttt(model, tokens)


@pytest.mark.parametrize("first_changed", [2 * CHUNK + 1, CHUNK + 50, CHUNK // 2])
def test_ttt_scores_are_independent_of_later_tokens(first_changed):
    """Legality: changing every token from position p on leaves the nll of every target before p
    unchanged. p = 2C + 1 keeps chunks 0 and 1 whole; a p inside a chunk also catches training on
    a chunk before scoring it, which a perturbation at a chunk boundary cannot see."""
    tokens = stream()
    changed = tokens.copy()
    changed[first_changed:] = (changed[first_changed:] + 1) % VOCAB
    results = [ttt(tiny_model(), toks).per_target for toks in (tokens, changed)]
    assert torch.equal(results[0][:first_changed], results[1][:first_changed])
    assert not torch.equal(results[0][first_changed:], results[1][first_changed:])


def test_bad_settings_are_refused():
    model, tokens = tiny_model(), stream()
    for changes, message in [(dict(chunk_tokens=16), "chunk-tokens 16 < seq_len"), (dict(lr=float("nan")), "ttt-lr"),
                             (dict(momentum=1.0), "momentum"), (dict(batch_seqs=0), "batch-seqs")]:
        with pytest.raises(ValueError, match=message):
            ttt(model, tokens, **changes)


def parity_scores(ctx) -> dict:
    trained = ttt(tiny_model(), stream(), ctx)
    return {"ttt": [trained.nll, trained.tokens, trained.bytes], "chunks": trained.chunks,
            "per_target": trained.per_target.tolist()}


def test_two_ranks_match_one(tmp_path):
    one = parity_scores(ONE)
    for two in rank_results(parity_scores, tmp_path):
        assert two["ttt"][1:] == one["ttt"][1:]
        assert two["ttt"][0] == pytest.approx(one["ttt"][0], rel=1e-5)
        assert [(c["tokens"], c["bytes"]) for c in two["chunks"]] == [(c["tokens"], c["bytes"]) for c in one["chunks"]]
        np.testing.assert_allclose([c["nll_sum"] for c in two["chunks"]], [c["nll_sum"] for c in one["chunks"]],
                                   rtol=1e-5)
        np.testing.assert_allclose(two["per_target"], one["per_target"], rtol=1e-4)
