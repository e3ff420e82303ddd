"""`eval --packed`: the 2026-04-27 record's eval_val, by its own arithmetic and by direct forwards."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cli_helpers import assert_clean_error, golfctl
from golfctl.bpb import ByteTables
from golfctl.config import TrainConfig, resolve_config
from golfctl.dataset import open_dataset
from golfctl.model import GPT
from golfctl.packed import PackedConfig, packed_rows
from golfctl.tokenizer import load_tokenizer
from golfctl.weights import Weights, save_model_file
from stages.evaluate import EvalConfig, run_eval

SEQ = 32  # the scaled-down model's train_seq_len and doc_max_len
PACKED = PackedConfig(batch_tokens=3 * 4 * SEQ, world_size=3)  # rows of 4 sequences, 3 emulated ranks


def record_ranges(n_tokens: int, seq_len: int, batch_tokens: int, world_size: int) -> list[tuple[int, int]]:
    """(raw_start, raw_end) of every batch the record's eval_val scores (its train_gpt.py lines 2733–2771)."""
    local_batch_seqs = batch_tokens // world_size // seq_len
    total_seqs = (n_tokens - 1) // seq_len
    out = []
    for rank in range(world_size):
        seq_start = total_seqs * rank // world_size
        seq_end = total_seqs * (rank + 1) // world_size
        seq_end = seq_start + ((seq_end - seq_start) // local_batch_seqs) * local_batch_seqs
        for batch_seq_start in range(seq_start, seq_end, local_batch_seqs):
            batch_seq_end = min(batch_seq_start + local_batch_seqs, seq_end)
            out.append((batch_seq_start * seq_len, batch_seq_end * seq_len + 1))
    return out


@pytest.mark.parametrize("n_tokens,seq_len,batch_tokens,world_size", [
    (47_851_520 + 1, 2048, 524_288, 8),  # the record's validation tokens (log: val_tokens)
    (10_000, 32, 384, 3), (129, 32, 256, 8), (5_000, 64, 4096, 2)])
def test_rows_are_the_records_batches(n_tokens, seq_len, batch_tokens, world_size):
    rows = packed_rows(n_tokens, seq_len, PackedConfig(batch_tokens, world_size))
    assert [(w.start, w.end + 1) for windows in rows for w in windows] == record_ranges(
        n_tokens, seq_len, batch_tokens, world_size)
    assert all(w.score_from == w.start + 1 for windows in rows for w in windows)  # every target of a row


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory, small_dataset):
    """A scaled-down frontier model (documents cut every 32 tokens) with random weights, as a model file."""
    cfg = resolve_config(TrainConfig, "frontier", overrides=(
        "vocab_size=512", "model_dim=32", "num_layers=4", "num_heads=4", "num_kv_heads=2", "rope_dims=4",
        "xsa_last_n=4", "loop_start=1", "loop_end=1", "num_loops=2", "two_lane_start=3", "gate_window=6",
        f"doc_max_len={SEQ}", f"train_seq_len={SEQ}", "compile=false"))
    torch.manual_seed(0)
    model = GPT(cfg.model_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    path = tmp_path_factory.mktemp("packed") / "model.safetensors"
    save_model_file(path, Weights(cfg, model.state_dict(), "raw", "test", "0" * 64), provenance={})
    return path, model


def test_packed_eval_is_the_rows_scored_directly(tmp_path, packed_model, small_dataset):
    path, model = packed_model
    report = run_eval(EvalConfig(model=path, data=small_dataset, out=tmp_path / "eval.json", plain=False,
                                 sliding=False, packed=True, packed_config=PACKED))
    result = report["results"]["packed"]
    dataset = open_dataset(small_dataset)
    split = dataset.splits["val"]
    tokens = split.load_tokens()
    tables = ByteTables.from_tokenizer(load_tokenizer(dataset.tokenizer_path))
    nll = n_bytes = n_targets = 0.0
    model.eval()
    for start, end in record_ranges(tokens.size, SEQ, PACKED.batch_tokens, PACKED.world_size):
        row = torch.from_numpy(tokens[start:end].astype(np.int64))
        with torch.no_grad():
            nll += float(model(row[None, :-1], row[None, 1:], reduction="none").double().sum())
        n_bytes += int(tables.target_bytes(tokens[start:end - 1], tokens[start + 1:end]).sum())
        n_targets += end - start - 1
    assert result["tokens"] == n_targets < split.tokens - 1  # the truncation drops targets
    assert result["bytes"] == n_bytes
    assert result["val_loss"] == pytest.approx(nll / n_targets, rel=1e-9)
    assert result["val_bpb"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-9)
    assert report["settings"]["packed_world_size"] == 3


def test_two_ranks_give_the_emulated_ranks_result(tmp_path, packed_model, small_dataset):
    path, _ = packed_model
    common = ["--no-plain", "--no-sliding", "--packed", "--packed-batch-tokens", PACKED.batch_tokens,
              "--packed-world-size", PACKED.world_size]
    assert golfctl("eval", path, "--data", small_dataset, "--out", tmp_path / "one.json", *common).returncode == 0
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "golfctl",
            "eval", path, "--data", small_dataset, "--out", tmp_path / "two.json", *common]
    result = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["results"]["packed"] for n in ("one", "two"))
    assert (two["tokens"], two["bytes"]) == (one["tokens"], one["bytes"])
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-9)


def test_packed_needs_document_attention_and_a_row(tmp_path, packed_model, small_dataset, trained_run):
    assert_clean_error(golfctl("eval", trained_run / "ckpt.safetensors", "--data", small_dataset, "--out",
                               tmp_path / "e.json", "--packed"), "doc_max_len")
    path, _ = packed_model
    packed_only = ("--packed", "--no-plain", "--no-sliding")
    assert_clean_error(golfctl("eval", path, "--data", small_dataset, "--out", tmp_path / "e.json", *packed_only,
                               "--packed-batch-tokens", 10 ** 8, "--packed-world-size", 2), "no packed row")
    assert_clean_error(golfctl("eval", path, "--data", small_dataset, "--out", tmp_path / "e.json", *packed_only,
                               "--packed-batch-tokens", 16), "gives no sequence")
    assert not (tmp_path / "e.json").exists()
