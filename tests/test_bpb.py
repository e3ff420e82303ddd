"""The BPB byte rule: each leading space counted once, byte-fallback 1, control 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from golfctl.bpb import ByteTables, bits_per_byte
from golfctl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def sp(shakespeare_dataset):
    return load_tokenizer(shakespeare_dataset / "tokenizer.model")


@pytest.fixture(scope="module")
def tables(sp):
    return ByteTables.from_tokenizer(sp)


def test_table_kinds(sp, tables):
    space = sp.piece_to_id("\u2581")
    byte_a = sp.piece_to_id("<0x41>")
    assert tables.boundary[[0, 1, 2, 3]].all() and (tables.base_bytes[[0, 1, 2, 3]] == 0).all()
    assert tables.base_bytes[byte_a] == 1 and not tables.leading_space[byte_a]
    assert tables.base_bytes[space] == 0 and tables.leading_space[space]
    word = sp.piece_to_id("\u2581the")
    assert tables.base_bytes[word] == 3 and tables.leading_space[word], "the ▁ is not in the table's count"


def test_leading_space_counted_once(sp, tables):
    text = "to be or not to be"
    ids = [1, *sp.encode(text)]
    assert tables.stream_bytes(np.array(ids)) == len(text.encode("utf-8"))


def test_leading_space_after_boundary_is_free(sp, tables):
    word = sp.piece_to_id("\u2581the")
    assert tables.target_bytes(np.array([1]), np.array([word]))[0] == 3  # after BOS
    assert tables.target_bytes(np.array([word]), np.array([word]))[0] == 4  # after a word


def test_byte_fallback_pieces_are_one_byte_each(sp, tables):
    text = "naïve café 1234 ☃"  # digits, accents and a snowman fall back to bytes in this vocab
    ids = sp.encode(text)
    assert any(sp.is_byte(i) for i in ids)
    assert tables.stream_bytes(np.array([1, *ids])) == len(sp.decode(ids).encode("utf-8"))


def test_bits_per_byte():
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
