"""A dataset cut into several shards per split reads and scores exactly like the same tokens in one shard."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import golfctl

from golfctl.dataset import open_dataset
from golfctl.loader import TokenStream, TrainBatches
from stages.tokenize import TokenizeConfig, run_tokenize

# Three of the small corpus's poems, The Passionate Pilgrim first so that it is the validation
# document. With the small dataset's tokenizer it is 4,128 tokens and the two training poems 8,285,
# so 3,500-token shards give 2 validation and 3 training shards (any size in 2,762..4,127 would).
# The five poems in their own order admit no such size: the validation split (the first k poems)
# is under a third of the training tokens, or more than all of them.
SHARD_TOKENS = 3_500
VAL_POEM = "passionate_pilgrim_gut.txt"
TRAIN_POEMS = ("lovers_complaint_gut.txt", "phoenix_and_the_turtle_gut.txt")
HEADER_INTS = 256


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, small_corpus, small_dataset) -> dict:
    root = tmp_path_factory.mktemp("many_shards")
    corpus = root / "poems"
    corpus.mkdir()
    shutil.copy(small_corpus / VAL_POEM, corpus / f"0_{VAL_POEM}")  # the corpus reads files in name order
    for name in TRAIN_POEMS:
        shutil.copy(small_corpus / name, corpus / name)
    common = dict(corpus=str(corpus), tokenizer=small_dataset / "tokenizer.model", val_docs=1)
    return {
        "sharded": run_tokenize(TokenizeConfig(out=root / "sharded", shard_tokens=SHARD_TOKENS, **common)),
        "one": run_tokenize(TokenizeConfig(out=root / "one", **common)),
        "root": root,
    }


def _read_shard(path) -> np.ndarray:
    """A shard read with numpy alone: 256 little-endian int32 header, then uint16 tokens."""
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    tokens = np.fromfile(path, dtype="<u2", offset=HEADER_INTS * 4)
    assert header[:3].tolist() == [20240520, 1, tokens.size] and not header[3:].any(), path
    return tokens


def _stream(root, manifest: dict, split: str) -> np.ndarray:
    return np.concatenate([_read_shard(root / s["file"]) for s in manifest["splits"][split]["shards"]])


def test_three_train_shards_stream_in_order_across_boundaries(datasets):
    root = datasets["root"] / "sharded"
    manifest = datasets["sharded"]
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "val")] == [3, 2]
    assert all(s["tokens"] == SHARD_TOKENS for split in manifest["splits"].values() for s in split["shards"][:-1])
    stream = _stream(root, manifest, "train")
    assert stream.size == manifest["splits"]["train"]["tokens"]
    assert np.array_equal(stream, _stream(datasets["root"] / "one", datasets["one"], "train"))

    split = open_dataset(root).splits["train"]
    assert np.array_equal(TokenStream(split).read(0, stream.size), stream)
    batch_tokens, seq_len, grad_accum = 512, 64, 2
    batches = TrainBatches(split, batch_tokens, seq_len, grad_accum, seed=3, rank=0, world_size=1)
    chunks = batches.state.chunks_per_epoch
    assert chunks == (stream.size - 1) // batch_tokens
    starts = [batches.chunk_start(step) for step in range(chunks)]
    assert sorted(starts) == [i * batch_tokens for i in range(chunks)]  # one epoch visits every chunk once
    for boundary in np.cumsum([s["tokens"] for s in manifest["splits"]["train"]["shards"]])[:-1]:
        assert any(start < boundary <= start + batch_tokens for start in starts), "a batch must straddle each boundary"
    micro = batch_tokens // grad_accum
    for step, start in enumerate(starts):
        for m, (x, y) in enumerate(batches.micro_batches(step, torch.device("cpu"))):
            expected = stream[start + m * micro:start + (m + 1) * micro + 1].astype(np.int64)
            assert np.array_equal(x.numpy().ravel(), expected[:-1]) and np.array_equal(y.numpy().ravel(), expected[1:])


def test_two_val_shards_score_every_token_once_and_as_one_shard(tmp_path, datasets, trained_run):
    results = {}
    for name in ("sharded", "one"):
        out = tmp_path / f"{name}.json"
        run = golfctl("eval", trained_run / "ckpt.safetensors", "--data", datasets["root"] / name, "--no-sliding",
                      "--out", out)
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = json.loads(out.read_text())["results"]
        val = datasets[name]["splits"]["val"]
        assert list(results[name]) == ["plain"]
        assert results[name]["plain"]["tokens"] == val["tokens"] - 1 and results[name]["plain"]["bytes"] == val["bytes"]
    assert [len(datasets[name]["splits"]["val"]["shards"]) for name in ("sharded", "one")] == [2, 1]
    assert np.array_equal(_stream(datasets["root"] / "sharded", datasets["sharded"], "val"),
                          _stream(datasets["root"] / "one", datasets["one"], "val"))
    assert results["sharded"]["plain"]["val_bpb"] == pytest.approx(results["one"]["plain"]["val_bpb"], rel=1e-9, abs=0)
