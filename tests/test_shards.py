"""The shard format: writer/reader round trip and the validator's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from golfctl.errors import UserError
from golfctl.fileio import sha256_file
from golfctl.shards import HEADER_BYTES, MAGIC, ShardWriter, load_shard, read_shard_header


def _write(folder, arrays, shard_tokens):
    writer = ShardWriter(folder, "train", shard_tokens)
    for a in arrays:
        writer.append(np.asarray(a, dtype=np.uint16))
    return writer.close()


def test_round_trip_and_rollover(tmp_path):
    data = np.arange(25, dtype=np.uint16)
    records = _write(tmp_path, [data[:7], data[7:19], data[19:]], shard_tokens=10)
    assert [r.tokens for r in records] == [10, 10, 5]
    assert [r.file for r in records] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin",
                                         "fineweb_train_000002.bin"]
    assert all(r.sha256 == sha256_file(tmp_path / r.file) for r in records)
    back = np.concatenate([load_shard(tmp_path / r.file) for r in records])
    assert np.array_equal(back, data)
    raw = (tmp_path / records[0].file).read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [MAGIC, 1, 10] and not header[3:].any()
    assert len(raw) == HEADER_BYTES + 2 * 10


@pytest.fixture
def shard(tmp_path):
    return tmp_path / _write(tmp_path, [np.arange(100)], 1000)[0].file


def test_truncated(shard):
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(UserError, match=r"truncated.*100 tokens"):
        read_shard_header(shard)


def test_shorter_than_header(shard):
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="shorter than the 1024-byte header"):
        read_shard_header(shard)


def test_trailing_garbage(shard):
    shard.write_bytes(shard.read_bytes() + b"\0\0")
    with pytest.raises(UserError, match="longer than its header"):
        read_shard_header(shard)


def test_wrong_magic_and_version(shard):
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="not a token shard"):
        read_shard_header(shard)
    raw[0] ^= 0xFF
    raw[4] = 7
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="version 7"):
        read_shard_header(shard)


def test_missing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_shard(tmp_path / "nope.bin")
