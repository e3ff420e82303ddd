"""Sliding-window scoring and score-first TTT: coverage, parity with plain validation, bytes,
legality (no target trained on before it is scored) and 1-rank/2-rank parity."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import golfctl.sliding as sliding
from golfctl.bpb import ByteTables, TorchByteTables
from golfctl.config import ModelConfig
from golfctl.distributed import DistContext, init_distributed, shutdown
from golfctl.model import GPT
from golfctl.sliding import Window, chunk_sequences, plan_windows, score_first_ttt, score_windows
from golfctl.validation import plain_validation

VOCAB, SEQ_LEN, STRIDE, CHUNK = 64, 32, 8, 128
N_TOKENS = 700  # 699 targets: 6 chunks of 128 (the last one short), 4 training sequences per full chunk
CPU = torch.device("cpu")
ONE = DistContext(rank=0, world_size=1, local_rank=0, device=CPU)
# Non-dividing on purpose: steps of 3 then 1 sequence, so a rank of two sometimes trains on nothing.
# Gradient norms run 1.6-3.2 here: the clip acts on some steps only, so it cannot hide a scaling error.
TTT = dict(chunk_tokens=CHUNK, epochs=2, lr=0.05, momentum=0.9, grad_clip=2.5, train_seqs_per_step=3,
           seq_len=SEQ_LEN)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads, and idle OpenMP threads spin on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def ttt(model, tokens, ctx=ONE, windows=None, **changes):
    windows = windows or plan_windows(len(tokens), SEQ_LEN, STRIDE)
    return score_first_ttt(model, tokens, windows, TABLES, ctx, 1, 5, params=list(model.parameters()),
                           per_target=True, **{**TTT, **changes})


@pytest.mark.parametrize("n", [2, 3, 5, 16, 17, 18, 33, 100, 129, 257])
@pytest.mark.parametrize("seq_len", [1, 4, 16])
def test_plan_scores_every_target_once(n, seq_len):
    for stride in sorted({s for s in (1, 3, seq_len // 2, seq_len) if 1 <= s <= seq_len}):
        windows = plan_windows(n, seq_len, stride)
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
            plan_windows(n, seq_len, stride)


def test_stride_equal_to_seq_len_matches_plain_validation():
    model, tokens = tiny_model(), stream(4 * SEQ_LEN + 1)  # exactly four plain windows
    sums = score_windows(model, tokens, plan_windows(len(tokens), SEQ_LEN, SEQ_LEN), TABLES, ONE, 1, 3)
    plain = plain_validation(model, tokens, TABLES, SEQ_LEN, 3, ONE, 1)
    assert (sums.tokens, sums.bytes) == (plain.tokens, plain.bytes) == (len(tokens) - 1, plain.bytes)
    assert sums.result().loss == pytest.approx(plain.loss, rel=1e-12)
    assert sums.result().bpb == pytest.approx(plain.bpb, rel=1e-12)


@pytest.mark.parametrize("n, seq_len, stride", [(N_TOKENS, SEQ_LEN, STRIDE), (N_TOKENS, SEQ_LEN, SEQ_LEN),
                                                (N_TOKENS, SEQ_LEN, 7), (20, SEQ_LEN, STRIDE)])
def test_every_target_and_byte_is_counted(n, seq_len, stride):
    model, tokens = tiny_model(), stream(n)
    windows = plan_windows(n, seq_len, stride)
    sums = score_windows(model, tokens, windows, TABLES, ONE, 1, 4, per_target=True)
    assert sums.tokens == n - 1
    assert sums.bytes == byte_tables().stream_bytes(tokens)
    assert sums.per_target[0] == 0 and (sums.per_target[1:] > 0).all()
    assert sums.nll == pytest.approx(sums.per_target.sum().item(), rel=1e-12)
    # torch tokens, other batching: the same numbers
    again = score_windows(model, torch.from_numpy(tokens.astype(np.int64)), windows, TABLES, ONE, 1, 3)
    assert (again.tokens, again.bytes) == (sums.tokens, sums.bytes)
    assert again.nll == pytest.approx(sums.nll, rel=1e-12)


def test_sliding_target_sees_its_window_context():
    """Each target's nll is the full model's on exactly its window's inputs."""
    model, tokens = tiny_model(), stream()
    windows = plan_windows(len(tokens), SEQ_LEN, STRIDE)
    per_target = score_windows(model, tokens, windows, TABLES, ONE, 1, 4, per_target=True).per_target
    for w in (windows[0], windows[5], windows[-1]):
        x = torch.from_numpy(tokens[w.start:w.end + 1].astype(np.int64))[None]
        with torch.no_grad():
            nll = model(x[:, :-1], x[:, 1:], loops=1, reduction="none")[0, w.offset:].double()
        torch.testing.assert_close(per_target[w.score_from:w.end + 1], nll, rtol=1e-6, atol=0)


@pytest.mark.parametrize("window_stride, changes", [
    (STRIDE, dict(epochs=0)),
    (STRIDE, dict(lr=0.0)),
    (SEQ_LEN, dict(epochs=0, chunk_tokens=16, seq_len=16)),  # chunks smaller than windows: some start none
])
def test_ttt_without_learning_equals_sliding(window_stride, changes):
    model, tokens = tiny_model(), stream()
    windows = plan_windows(len(tokens), SEQ_LEN, window_stride)
    plain = score_windows(model, tokens, windows, TABLES, ONE, 1, 5, per_target=True)
    result = ttt(model, tokens, windows=windows, **changes)
    assert torch.equal(result.per_target, plain.per_target)
    assert (result.tokens, result.bytes) == (plain.tokens, plain.bytes)
    assert result.nll == pytest.approx(plain.nll, rel=1e-12)
    chunk_tokens = changes.get("chunk_tokens", CHUNK)
    assert len(result.chunks) == -(-(len(tokens) - 1) // chunk_tokens)
    assert sum(c["tokens"] for c in result.chunks) == len(tokens) - 1


def test_ttt_changes_only_chunks_after_the_first():
    model, tokens = tiny_model(), stream()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.blocks[0].attn_scale
    frozen.requires_grad_(False)
    trained = score_first_ttt(model, tokens, plan_windows(len(tokens), SEQ_LEN, STRIDE), TABLES, ONE, 1, 5,
                              params=[p for p in model.parameters() if p is not frozen], **TTT)
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


def test_training_past_the_watermark_raises():
    model, tokens = tiny_model(), stream()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    args = (SEQ_LEN, opt, params, ONE, 1, 3, 1.0, 1)
    sliding._train_chunk(model, tokens, [100 - SEQ_LEN], 100, *args)  # targets 69..100: all scored
    with pytest.raises(RuntimeError, match="before it is scored"):
        sliding._train_chunk(model, tokens, [101 - SEQ_LEN], 100, *args)  # target 101 is not


def test_ttt_loop_refuses_a_chunk_not_yet_scored(monkeypatch):
    """A bug that trained on the next chunk is caught in the loop, not after the fact."""
    model, tokens = tiny_model(), stream()
    monkeypatch.setattr(sliding, "chunk_sequences", lambda i, c, last, t: chunk_sequences(i + 1, c, last, t))
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scores(ctx: DistContext) -> dict:
    """Sliding and TTT results on the shared problem, as plain numbers."""
    model, tokens = tiny_model(), stream()
    windows = plan_windows(len(tokens), SEQ_LEN, STRIDE)
    slide = score_windows(model, tokens, windows, TABLES, ctx, 1, 4, per_target=True)
    trained = ttt(model, tokens, ctx)
    return {"sliding": [slide.nll, slide.tokens, slide.bytes], "sliding_per_target": slide.per_target.tolist(),
            "ttt": [trained.nll, trained.tokens, trained.bytes], "chunks": trained.chunks,
            "ttt_per_target": trained.per_target.tolist()}


def rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks on two cores
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed()
    try:
        result = scores(ctx)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        shutdown(ctx)


def test_two_ranks_match_one(tmp_path):
    mp.spawn(rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    one = scores(ONE)
    for rank in range(2):
        two = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert two["sliding"][1:] == one["sliding"][1:] and two["ttt"][1:] == one["ttt"][1:]
        assert two["sliding"][0] == pytest.approx(one["sliding"][0], rel=1e-6)
        np.testing.assert_allclose(two["sliding_per_target"], one["sliding_per_target"], rtol=1e-6)
        assert two["ttt"][0] == pytest.approx(one["ttt"][0], rel=1e-5)
        assert [c["tokens"] for c in two["chunks"]] == [c["tokens"] for c in one["chunks"]]
        assert [c["bytes"] for c in two["chunks"]] == [c["bytes"] for c in one["chunks"]]
        np.testing.assert_allclose([c["nll_sum"] for c in two["chunks"]], [c["nll_sum"] for c in one["chunks"]],
                                   rtol=1e-5)
        np.testing.assert_allclose(two["ttt_per_target"], one["ttt_per_target"], rtol=1e-4)
