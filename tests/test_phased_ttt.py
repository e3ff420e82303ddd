"""Phased LoRA TTT (golfctl/phased_ttt.py): the record's document, batch, window and phase rules written out
here, scores against direct forwards, legality by perturbing one token, and 1 rank = 2 ranks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cli_helpers import assert_clean_error, golfctl
from golfctl.bpb import SidecarBytes
from golfctl.config import TrainConfig, resolve_config
from golfctl.dataset import open_dataset
from golfctl.distributed import DistContext, single_process
from golfctl.lora import DocumentLoRA
from golfctl.model import GPT, SlotAdapters, layer_sequence
from golfctl import phased_ttt as phased
from golfctl.phased_ttt import (PhasedTTTConfig, batch_queue, chunk_window, find_documents, global_sgd_documents,
                                phase_boundaries, phase_ends)
from golfctl.shards import BOS_ID
from golfctl.weights import Weights, save_model_file
from ranks import rank_results

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = single_process(torch.device("cpu"))
# small enough to run in a second, big enough for every boundary: 24 documents in 12 batches on 2 lanes,
# phases after 6 and 12 documents (queue batches 2 and 5), documents of up to 5 chunks, windows shorter than them
TINY = PhasedTTTConfig(batch_docs=2, chunk_tokens=4, seq_len=10, lora_rank=2, lora_alpha=4.0, lora_lr=0.02,
                       prefix_docs=12, num_phases=2, global_lr=0.02, global_chunk_tokens=24, global_batch_seqs=2,
                       global_seq_len=8, lanes=2, seed=5)


def tiny_model(vocab: int = 64, **changes) -> GPT:
    """A scaled-down frontier model (loops, two lanes, gates, documents cut every 8) with random weights."""
    cfg = resolve_config(TrainConfig, "frontier", overrides=(
        f"vocab_size={vocab}", "model_dim=32", "num_layers=4", "num_heads=4", "num_kv_heads=2", "rope_dims=4",
        "xsa_last_n=4", "loop_start=1", "loop_end=1", "num_loops=2", "two_lane_start=3", "gate_window=6",
        "doc_max_len=8", "train_seq_len=8", "compile=false"))
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(cfg.model_config(), **changes))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return model


def stream(n_docs: int = 24, seed: int = 0) -> np.ndarray:
    """BOS-separated documents of 3 to 20 tokens."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.concatenate(([BOS_ID], rng.integers(2, 64, rng.integers(2, 20))))
                           for _ in range(n_docs)]).astype(np.uint16)


def run(model: GPT, tokens: np.ndarray, cfg: PhasedTTTConfig = TINY, ctx: DistContext = CPU) -> phased.PhasedSums:
    sidecar = SidecarBytes(np.random.default_rng(1).integers(0, 5, len(tokens)).astype(np.uint16))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        return phased.phased_ttt(model, tokens, sidecar.on(ctx.device), ctx, 2, cfg, per_target=True)
    finally:
        model.load_state_dict(state)


def test_documents_queue_windows_and_phases_follow_the_record():
    tokens = np.array([1, 5, 6, 1, 7, 1, 8, 9, 9, 9, 1, 4], dtype=np.uint16)
    # a document ends with the next one's BOS as its last target; the last runs to the end
    assert find_documents(tokens) == [(0, 4), (3, 3), (5, 6), (10, 2)]
    assert find_documents(np.array([1, 5, 1], dtype=np.uint16)) == [(0, 3)]  # a final BOS predicts nothing
    # sorted by length (ties in stream order), batches of 2, longest batch first (ties in batch order)
    queue = batch_queue([4, 3, 6, 2, 4, 6, 3], 2)
    assert [(b.order, b.docs) for b in queue] == [(2, [4, 2]), (3, [5]), (1, [6, 0]), (0, [3, 1])]
    # chunks of 48 predictions, windows of up to 2048 inputs ending at the chunk's end
    assert chunk_window(0, 100, 3, 48, 2048) == (0, 48, 0, 48)
    assert chunk_window(2, 100, 3, 48, 2048) == (0, 100, 96, 4)
    assert chunk_window(50, 5000, 105, 48, 2048) == (2448 - 2048, 2048, 2400 - 400, 48)
    assert chunk_window(104, 5000, 105, 48, 2048) == (5000 - 2048, 2048, 4992 - 2952, 8)
    # the record's boundaries, and one phase per batch at most
    assert phase_boundaries(50_000, PhasedTTTConfig()) == [833, 1666, 2500]
    assert phase_boundaries(0, PhasedTTTConfig()) == [] == phase_boundaries(9, dataclasses.replace(TINY, prefix_docs=0))
    assert phase_ends(queue, [1, 2, 3]) == [0, 1, 2]
    assert phase_ends(queue, [3, 4]) == [1, 2]
    # a phase trains on the scored documents in (length order, position), cut to its boundary
    assert global_sgd_documents(queue, 1, 2) == [4, 2] and global_sgd_documents(queue, 2, 4) == [6, 0, 4, 2]


def test_without_steps_every_target_is_its_window_scored_directly():
    model, tokens = tiny_model(), stream()
    cfg = dataclasses.replace(TINY, lora_lr=0.0, prefix_docs=0)
    sums = run(model, tokens, cfg)
    sidecar = np.random.default_rng(1).integers(0, 5, len(tokens))
    expected = np.zeros(len(tokens))
    model.eval()
    for start, length in find_documents(tokens):
        for lo in range(0, length - 1, cfg.chunk_tokens):  # predictions lo..hi-1 (targets start+1+k), one chunk
            hi = min(lo + cfg.chunk_tokens, length - 1)
            first = max(0, hi - cfg.seq_len)  # the window: up to seq_len inputs ending at the chunk's end
            row = torch.from_numpy(tokens[start + first:start + hi + 1].astype(np.int64))[None]
            with torch.no_grad():
                nll = model(row[:, :-1], row[:, 1:], loops=2, reduction="none", documents=False)
            expected[start + 1 + lo:start + 1 + hi] = nll[0, lo - first:].numpy()
    assert sums.per_target.numpy() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert sums.tokens == len(tokens) - 1 and sums.bytes == int(sidecar[1:].sum())
    docs = find_documents(tokens)
    assert [d["start"] for d in sums.documents] == [s for s, _ in docs]
    assert [d["tokens"] for d in sums.documents] == [n - 1 for _, n in docs]
    assert [d["bytes"] for d in sums.documents] == [int(sidecar[s + 1:s + n].sum()) for s, n in docs]
    assert [p["documents"] for p in sums.phases] == [len(docs)]


def test_adapters_enter_each_block_application_where_its_weights_do():
    """Linear adapters on q, k and v, the same for every application of a block, are its weights plus theirs."""
    model = tiny_model()
    x = torch.from_numpy(stream(6)[:40].astype(np.int64))[None]
    sequence = layer_sequence(model.cfg, 2)
    deltas = {(layer, name): 0.1 * torch.randn(out, 32) for layer in set(sequence)
              for name, out in (("q", 32), ("k", 16), ("v", 16))}

    class Linear:
        def slot(self, i):
            return SlotAdapters(**{name: (lambda h, m=deltas[sequence[i], name]: h @ m.T) for name in "qkv"})

        def head(self, h):
            return torch.zeros(())

    with torch.no_grad():
        adapted = model(x, loops=2, lora=Linear())
        for (layer, name), m in deltas.items():
            getattr(model.blocks[layer].attn, f"c_{name}").weight += m
        assert torch.allclose(adapted, model(x, loops=2), atol=1e-5)


def test_new_adapters_change_nothing_and_draw_a_from_their_generator():
    model = tiny_model()
    x = torch.from_numpy(stream(6)[:40].astype(np.int64)).view(2, 20)
    lora = DocumentLoRA(2, model.cfg, len(layer_sequence(model.cfg, 2)), 4, 8.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x, loops=2, lora=lora), model(x, loops=2))
    torch.manual_seed(3)  # the record draws from the global RNG in the same order: head first, bound 1/sqrt(in)
    assert torch.equal(lora.head_lora.A, torch.empty(2, 4, 32).uniform_(-32 ** -0.5, 32 ** -0.5))
    assert torch.equal(lora.q[0].A, torch.empty(2, 4, 32).uniform_(-32 ** -0.5, 32 ** -0.5))


def allowed_to_change(tokens: np.ndarray, cfg: PhasedTTTConfig, t: int) -> np.ndarray:
    """Target positions a new token at position t may influence: the later targets of its document; documents in
    later batches of its lane and phase (the lane's A); every document of a later phase (the global SGD)."""
    docs = find_documents(tokens)
    queue = batch_queue([n for _, n in docs], cfg.batch_docs)
    ends = phase_ends(queue, phase_boundaries(len(docs), cfg))
    phase_of = [sum(q > e for e in ends) for q in range(len(queue))]
    doc, = [i for i, (s, n) in enumerate(docs) if s < t < s + n - 1 or (i == len(docs) - 1 and s < t)]
    j, = [b.queue_index for b in queue if doc in b.docs]
    allowed = np.zeros(len(tokens), dtype=bool)
    allowed[t:docs[doc][0] + docs[doc][1]] = True
    for b in queue:
        later_in_lane = b.queue_index > j and b.queue_index % cfg.lanes == j % cfg.lanes
        if phase_of[b.queue_index] > phase_of[j] or (later_in_lane and phase_of[b.queue_index] == phase_of[j]):
            for i in b.docs:
                allowed[docs[i][0] + 1:docs[i][0] + docs[i][1]] = True
    return allowed


def test_no_score_changes_before_the_token_is_scored():
    """Perturb one token: every target scored before it (earlier in its document, its chunk included; in earlier
    batches of its lane, other lanes, other documents of its batch, earlier phases) keeps its score exactly."""
    model, tokens = tiny_model(), stream()
    base = run(model, tokens).per_target.numpy()
    docs = find_documents(tokens)
    queue = batch_queue([n for _, n in docs], TINY.batch_docs)
    first_doc = queue[0].docs[-1]  # the longest document, scored first: later phases and lane batches follow it
    late_doc = queue[-1].docs[0]  # the shortest, scored in the last phase
    start, length = docs[first_doc]
    for t in (start + 2 * TINY.chunk_tokens, docs[late_doc][0] + 1):  # the last target of a chunk; a late document
        perturbed = tokens.copy()
        perturbed[t] = 2 + (perturbed[t] - 1) % 62  # another non-BOS token
        changed = run(model, perturbed).per_target.numpy() != base
        allowed = allowed_to_change(tokens, TINY, t)
        assert not (changed & ~allowed).any(), np.flatnonzero(changed & ~allowed)
        assert changed[t]
        if start < t < start + length:  # the test can see a leak: the phases and the lane do carry the change on
            assert changed[docs[late_doc][0] + 1:sum(docs[late_doc])].any()  # a later phase
            assert changed[[p for i in queue[2].docs for p in range(docs[i][0] + 1, sum(docs[i]))]].any()  # the lane


def test_global_phases_train_on_scored_documents_only(monkeypatch):
    model, tokens = tiny_model(), stream()
    docs = find_documents(tokens)
    queue = batch_queue([n for _, n in docs], TINY.batch_docs)
    ends = phase_ends(queue, phase_boundaries(len(docs), TINY))
    seen = []
    train = phased.global_sgd
    monkeypatch.setattr(phased, "global_sgd", lambda m, t, *args: (seen.append(t.clone()), train(m, t, *args)))
    run(model, tokens)
    assert len(seen) == len(ends) == 2
    for got, end, boundary in zip(seen, ends, phase_boundaries(len(docs), TINY)):
        chosen = global_sgd_documents(queue, end, boundary)
        assert set(chosen) <= {i for b in queue[:end + 1] for i in b.docs}  # batches scored before the phase
        assert torch.equal(got, torch.cat([torch.from_numpy(tokens[s:s + n].astype(np.int64))
                                           for s, n in (docs[i] for i in chosen)]))


def _two_rank_sums(ctx: DistContext) -> list:
    sums = run(tiny_model(), stream(), ctx=ctx)
    return [sums.nll, sums.tokens, sums.bytes, [d["nll_sum"] for d in sums.documents]]


def test_two_ranks_give_one_ranks_result(tmp_path):
    one = _two_rank_sums(CPU)
    for two in rank_results(_two_rank_sums, tmp_path):
        assert two[1:3] == one[1:3]
        assert two[0] == pytest.approx(one[0], rel=1e-7)  # float rounding: 1e-9 seen
        assert two[3] == pytest.approx(one[3], rel=1e-6)


@pytest.fixture(scope="module")
def caseops_model(tmp_path_factory, caseops_dataset):
    cfg = resolve_config(TrainConfig, "frontier", overrides=(
        "vocab_size=384", "model_dim=32", "num_layers=4", "num_heads=4", "num_kv_heads=2", "rope_dims=4",
        "xsa_last_n=4", "loop_start=1", "loop_end=1", "num_loops=2", "two_lane_start=3", "gate_window=6",
        "doc_max_len=16", "train_seq_len=16", "compile=false"))
    torch.manual_seed(0)
    model = GPT(cfg.model_config())
    path = tmp_path_factory.mktemp("phased") / "model.safetensors"
    save_model_file(path, Weights(cfg, model.state_dict(), "raw", "test", "0" * 64), provenance={})
    return path


def test_eval_ttt_phased_writes_documents_and_phases(tmp_path, caseops_model, caseops_dataset):
    """`eval --ttt --ttt-mode phased`: every target of the split once, its sidecar's bytes, sums per document and
    per phase, the settings recorded."""
    result = golfctl("eval", caseops_model, "--data", caseops_dataset, "--out", tmp_path / "eval.json", "--no-plain",
                     "--no-sliding", "--ttt", "--ttt-mode", "phased", "--phased-batch-docs", 1,
                     "--phased-chunk-tokens", 8, "--phased-seq-len", 16, "--phased-lora-rank", 4,
                     "--phased-prefix-docs", 2, "--phased-num-phases", 2, "--phased-global-chunk-tokens", 16,
                     "--phased-global-seq-len", 8, "--phased-lanes", 2)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    one = report["results"]["phased"]
    split = open_dataset(caseops_dataset).splits["val"]
    assert (one["tokens"], one["bytes"]) == (split.tokens - 1, split.bytes)
    assert len(one["documents"]) == 4 and [p["documents"] for p in one["phases"]] == [1, 1, 2]
    for part in ("documents", "phases"):
        assert sum(d["nll_sum"] for d in one[part]) == pytest.approx(one["val_loss"] * one["tokens"], rel=1e-12)
        assert sum(d["bytes"] for d in one[part]) == one["bytes"]
    assert report["settings"]["ttt_mode"] == "phased" and report["settings"]["phased_lanes"] == 2
    assert "ttt" not in report["results"]  # phased replaces score-first TTT


def test_ttt_mode_needs_ttt(tmp_path, caseops_model, caseops_dataset):
    assert_clean_error(golfctl("eval", caseops_model, "--data", caseops_dataset, "--out", tmp_path / "e.json",
                               "--ttt-mode", "phased"), "add --ttt")
    assert_clean_error(golfctl("eval", caseops_model, "--data", caseops_dataset, "--out", tmp_path / "e.json",
                               "--ttt", "--ttt-mode", "phased", "--phased-chunk-tokens", 64, "--phased-seq-len", 32),
                       "--phased-chunk-tokens 64 must be at most --phased-seq-len 32")
