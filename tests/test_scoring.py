"""The scoring core: window plans score every target once, plain's tail policy, bytes, context,
and 1-rank/2-rank parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfctl.scoring import Window, plain_windows, score_plain, sliding_windows, windows_by_chunk
from ranks import rank_results
from scoring_problem import N_TOKENS, ONE, SEQ_LEN, STRIDE, TABLES, byte_tables, scorer, stream, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [2, 3, 5, 16, 17, 18, 33, 100, 129, 257])
@pytest.mark.parametrize("seq_len", [1, 4, 16])
def test_plan_scores_every_target_once(n, seq_len):
    for stride in sorted({s for s in (1, 3, seq_len // 2, seq_len) if 1 <= s <= seq_len}):
        windows = sliding_windows(n, seq_len, stride)
        counts = np.zeros(n, dtype=int)
        for w in windows:
            counts[w.score_from:w.end + 1] += 1
            assert w.start >= 0 and w.start < w.score_from <= w.end <= n - 1
            assert w.length == min(seq_len, n - 1)  # full length, or one window of the short stream
        assert counts[0] == 0 and (counts[1:] == 1).all(), (n, seq_len, stride)
        assert windows[0] == Window(0, min(seq_len, n - 1), 1)  # the first window scores all its targets
        assert all(w.n_scored == stride for w in windows[1:-1])
        assert len(windows) == 1 or 1 <= windows[-1].n_scored <= stride


def test_plan_rejects_bad_settings():
    for n, seq_len, stride in [(1, 4, 2), (10, 4, 0), (10, 4, 5), (10, 0, 1)]:
        with pytest.raises(ValueError):
            sliding_windows(n, seq_len, stride)


@pytest.mark.parametrize("n", [4 * SEQ_LEN + 1, 4 * SEQ_LEN + 8, 4 * SEQ_LEN])
def test_plain_windows_tail_policy(n):
    """Non-overlapping full windows, then one full-length window ending at the last target that
    scores only the tail: every target once, every row of one length."""
    windows = plain_windows(n, SEQ_LEN)
    full = (n - 1) // SEQ_LEN
    assert windows[:full] == [Window(i * SEQ_LEN, (i + 1) * SEQ_LEN, i * SEQ_LEN + 1) for i in range(full)]
    tail = n - 1 - full * SEQ_LEN
    if tail:
        assert windows[full:] == [Window(n - 1 - SEQ_LEN, n - 1, full * SEQ_LEN + 1)]
    assert len(windows) == full + (tail > 0) and sum(w.n_scored for w in windows) == n - 1


def test_plain_score_equals_an_independent_sum_over_plain_windows():
    """score_plain against the definition: each full window's nll summed by hand, and the tail's
    targets scored with the context that precedes them."""
    model, tokens = tiny_model(), stream(4 * SEQ_LEN + 11)
    sums = score_plain(model, tokens, TABLES, SEQ_LEN, ONE, 1)
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        full = model(x[:4 * SEQ_LEN].view(4, SEQ_LEN), x[1:4 * SEQ_LEN + 1].view(4, SEQ_LEN), loops=1,
                     reduction="none").double().sum()
        tail = model(x[None, -SEQ_LEN - 1:-1], x[None, -SEQ_LEN:], loops=1, reduction="none")[0, -10:].double().sum()
    assert sums.tokens == len(tokens) - 1
    assert sums.bytes == byte_tables().stream_bytes(tokens)
    assert sums.nll == pytest.approx((full + tail).item(), rel=1e-12)
    assert sums.bpb == pytest.approx(sums.nll / np.log(2) / sums.bytes, rel=1e-15)
    assert model.training  # score_plain restores the mode it found


@pytest.mark.parametrize("n, seq_len, stride", [(N_TOKENS, SEQ_LEN, STRIDE), (N_TOKENS, SEQ_LEN, SEQ_LEN),
                                                (N_TOKENS, SEQ_LEN, 7), (20, SEQ_LEN, STRIDE)])
def test_every_target_and_byte_is_counted(n, seq_len, stride):
    model, tokens = tiny_model(), stream(n)
    windows = sliding_windows(n, seq_len, stride)
    sums = scorer(model, 4).score(tokens, windows, per_target=True)
    assert sums.tokens == n - 1
    assert sums.bytes == byte_tables().stream_bytes(tokens)
    assert sums.per_target[0] == 0 and (sums.per_target[1:] > 0).all()
    assert sums.nll == pytest.approx(sums.per_target.sum().item(), rel=1e-12)
    # torch tokens, other batching: the same numbers
    again = scorer(model, 3).score(torch.from_numpy(tokens.astype(np.int64)), windows)
    assert (again.tokens, again.bytes) == (sums.tokens, sums.bytes)
    assert again.nll == pytest.approx(sums.nll, rel=1e-12)


def test_sliding_target_sees_its_window_context():
    """Each target's nll is the full model's on exactly its window's inputs."""
    model, tokens = tiny_model(), stream()
    windows = sliding_windows(len(tokens), SEQ_LEN, STRIDE)
    per_target = scorer(model, 4).score(tokens, windows, per_target=True).per_target
    for w in (windows[0], windows[5], windows[-1]):
        x = torch.from_numpy(tokens[w.start:w.end + 1].astype(np.int64))[None]
        with torch.no_grad():
            nll = model(x[:, :-1], x[:, 1:], loops=1, reduction="none")[0, w.offset:].double()
        torch.testing.assert_close(per_target[w.score_from:w.end + 1], nll, rtol=1e-6, atol=0)


def test_windows_by_chunk_groups_by_first_scored_target():
    windows = sliding_windows(N_TOKENS, SEQ_LEN, STRIDE)
    chunks = windows_by_chunk(windows, 128)
    assert len(chunks) == 6 and [w for chunk in chunks for w in chunk] == windows
    for i, chunk in enumerate(chunks):
        assert all(i * 128 < w.score_from <= (i + 1) * 128 for w in chunk)
    with pytest.raises(ValueError, match="does not continue"):
        windows_by_chunk(windows[1:], 128)  # a plan must start at target 1


def parity_scores(ctx) -> dict:
    model, tokens = tiny_model(), stream()
    slide = scorer(model, 4, ctx).score(tokens, sliding_windows(len(tokens), SEQ_LEN, STRIDE), per_target=True)
    plain = score_plain(model, tokens, TABLES, SEQ_LEN, ctx, 1)
    return {"sliding": [slide.nll, slide.tokens, slide.bytes], "per_target": slide.per_target.tolist(),
            "plain": [plain.nll, plain.tokens, plain.bytes]}


def test_two_ranks_match_one(tmp_path):
    one = parity_scores(ONE)
    for two in rank_results(parity_scores, tmp_path):
        for method in ("sliding", "plain"):
            assert two[method][1:] == one[method][1:]
            assert two[method][0] == pytest.approx(one[method][0], rel=1e-6)
        np.testing.assert_allclose(two["per_target"], one["per_target"], rtol=1e-6)
