"""The quantized artifact: exact round trips, deterministic bytes, version 1 still read, and every damaged or
hostile file refused."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from golfctl.artifact import (CODEC_CHOICES, MAGIC, PREFIX_BYTES, Float16Tensor, QuantizedTensor, decode_artifact,
                              dequantized_state, encode_artifact, read_artifact, write_artifact)
from golfctl.errors import UserError

CONFIG = {"model_dim": 64, "num_layers": 2, "tie_embeddings": True}
SOURCE = {"model_sha256": "ab" * 32}
META = {"quantizer": "test", "clip": 0.5}
GOLDEN = Path(__file__).parent / "golden"


def make_tensors(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    weight = np.clip(np.round(rng.standard_normal((32, 48)) * 8), -31, 31).astype(np.int8)
    conv = rng.integers(-7, 8, (4, 3, 5)).astype(np.int8).reshape(4, 15)  # 3-d: rows = first dim
    return [
        QuantizedTensor("blocks.0.attn.qkv.weight", (32, 48), 6, weight,
                        (rng.random(32) * 0.01 + 1e-3).astype(np.float16)),
        QuantizedTensor("blocks.0.conv.weight", (4, 3, 5), 4, conv, rng.random(4).astype(np.float16)),
        QuantizedTensor("zeros.weight", (3, 4), 8, np.zeros((3, 4), np.int8), np.ones(3, np.float16)),
        Float16Tensor("norm.weight", (48,), rng.standard_normal(48).astype(np.float16)),
        Float16Tensor("scalar", (), np.array(0.25, np.float16)),
        # (added with format 2, last so the tensors above keep their values)
        QuantizedTensor("tok_emb.weight", (24, 16), 8, _near_copies(rng),
                        (rng.random(24) * 0.001 + 0.01).astype(np.float16)),
    ]


def _near_copies(rng) -> np.ndarray:
    """Rows 8.. repeat row 7 up to ±1: what the rows codec codes by reference."""
    q = np.round(rng.standard_normal((24, 16)) * 30).clip(-127, 127)
    q[8:] = q[7] + rng.integers(-1, 2, (16, 16))
    return q.clip(-127, 127).astype(np.int8)


@pytest.fixture(scope="module")
def valid() -> bytes:
    return encode_artifact(make_tensors(), "auto", CONFIG, SOURCE, META)


def parts(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, payload) of valid artifact bytes."""
    header_len = int.from_bytes(data[12:16], "little")
    header = json.loads(zstandard.ZstdDecompressor().decompress(data[PREFIX_BYTES:PREFIX_BYTES + header_len]))
    return header, data[PREFIX_BYTES + header_len:]


def signed(compressed_header: bytes, payload: bytes, version: int = 2) -> bytes:
    """An artifact around any header bytes, with a valid prefix and checksum."""
    digest = hashlib.sha256(compressed_header + payload).digest()
    return (MAGIC + version.to_bytes(4, "little") + len(compressed_header).to_bytes(4, "little")
            + len(payload).to_bytes(8, "little") + digest + compressed_header + payload)


def resigned(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header, sort_keys=True).encode()
    return signed(zstandard.ZstdCompressor(level=3).compress(text), payload, header["version"])


def refuse(data: bytes, match: str = "") -> None:
    """The bytes are refused with a UserError naming them, and without a large allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=match) as info:
            decode_artifact(data, "artifact.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "artifact.bin" in str(info.value)
    assert peak < 4 * len(data) + (1 << 20), f"peak {peak} bytes while refusing {len(data)} bytes"


@pytest.mark.parametrize("codec", CODEC_CHOICES)
def test_round_trip(tmp_path, codec):
    tensors = make_tensors()
    data = encode_artifact(tensors, codec, CONFIG, SOURCE, META)
    assert data[:8] == MAGIC
    path = tmp_path / "artifact.bin"
    write_artifact(path, data)
    art = read_artifact(path)
    assert (art.codec, art.config, art.source, art.meta) == (codec, CONFIG, SOURCE, META)
    assert PREFIX_BYTES + art.header_bytes + art.payload_bytes == len(data)
    assert list(art.tensors) == [t.name for t in tensors]
    assert_tensors_equal(art, tensors)
    codecs = {name: stored.codec for name, stored in art.stored.items()}
    assert {codecs[t.name] for t in tensors if isinstance(t, QuantizedTensor)} == (
        {"ans", "rows"} if codec == "auto" else {codec})
    if codec == "auto":
        assert codecs["tok_emb.weight"] == "rows"  # its rows 8.. are near-copies
    for t in tensors:  # float16 takes the smaller codec; raw is 2 bytes a value
        stored = art.stored[t.name]
        assert (stored.scale_bytes <= 2 * t.shape[0]) if isinstance(t, QuantizedTensor) else (
            stored.data_bytes <= 2 * t.values.size)


def assert_tensors_equal(art, tensors: list) -> None:
    """The decoded artifact holds exactly these tensors, and dequantizes them as q · scale."""
    state = dequantized_state(art)
    for t in tensors:
        back = art.tensors[t.name]
        assert type(back) is type(t) and back.shape == t.shape
        if isinstance(t, QuantizedTensor):
            assert back.bits == t.bits and back.q.dtype == np.int8 and back.scales.dtype == np.float16
            assert np.array_equal(back.q, t.q) and np.array_equal(back.scales, t.scales)
            expected = (t.q.astype(np.float32) * t.scales.astype(np.float32)[:, None]).reshape(t.shape)
        else:
            assert back.values.dtype == np.float16
            assert np.array_equal(back.values, t.values.reshape(t.shape))
            expected = t.values.astype(np.float32).reshape(t.shape)
        assert state[t.name].dtype == torch.float32 and tuple(state[t.name].shape) == t.shape
        assert torch.equal(state[t.name], torch.from_numpy(expected))


def test_deterministic_bytes(valid):
    assert encode_artifact(make_tensors(), "auto", CONFIG, SOURCE, META) == valid
    assert encode_artifact(make_tensors(), "zstd", CONFIG, SOURCE, META) == \
        encode_artifact(make_tensors(), "zstd", CONFIG, SOURCE, META)


@pytest.mark.parametrize("codec", ["ans", "zstd"])
def test_version_1_artifacts_still_load(codec):
    """Artifacts written by golfctl before format 2 (one codec, raw float16) decode to the same tensors."""
    data = (GOLDEN / f"artifact_v1_{codec}.bin").read_bytes()
    art = decode_artifact(data, "old.bin")
    assert (art.version, art.codec, art.config, art.source, art.meta) == (1, codec, CONFIG, SOURCE, META)
    old = make_tensors()[:-1]  # the tensors of the day
    assert list(art.tensors) == [t.name for t in old]
    assert_tensors_equal(art, old)
    assert {s.scale_codec for s in art.stored.values()} == {"raw", None}
    header, payload = parts(data)

    def edit(index: int, **changes) -> bytes:
        h = json.loads(json.dumps(header))
        h["tensors"][index].update(changes)
        return resigned(h, payload)

    qkv = header["tensors"][0]
    refuse(edit(1, data=qkv["data"]), "overlaps")
    refuse(edit(1, scales={"offset": qkv["scales"]["offset"] + 1, "length": 8}), "overlaps")
    refuse(edit(0, data={"offset": len(payload) - 1, "length": 2}), "past the")
    refuse(edit(0, data={"offset": -1, "length": 2}), "non-negative")
    refuse(edit(0, scales={"offset": qkv["scales"]["offset"], "length": 62}), "scales are 62 bytes")
    refuse(edit(3, shape=[47]), "expected 94")
    refuse(edit(0, codec="ans"), "keys")  # a version 2 field in a version 1 header


def test_truncated(valid):
    for length in sorted({*range(0, PREFIX_BYTES + 2), *range(PREFIX_BYTES, len(valid), 7), len(valid) - 1}):
        with pytest.raises(UserError, match="truncated|not a golfctl"):
            decode_artifact(valid[:length], "artifact.bin")
    refuse(valid + b"\0", "longer than its prefix")


def test_random_byte_flips(valid):
    rng = np.random.default_rng(1234)
    for _ in range(500):
        raw = bytearray(valid)
        raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
        with pytest.raises(UserError):
            decode_artifact(bytes(raw), "artifact.bin")


@pytest.mark.parametrize("codec", CODEC_CHOICES)
def test_payload_flips_behind_a_valid_checksum(codec):
    """A writer bug or a forged checksum: each tensor decodes to its declared shape or is refused."""
    header, payload = parts(encode_artifact(make_tensors(), codec, CONFIG, SOURCE, META))
    rng = np.random.default_rng(99)
    refused = 0
    for _ in range(200):
        raw = bytearray(payload)
        raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
        refused += not decodes_or_refused(resigned(header, bytes(raw)))
    assert refused  # flips in coded integers are mostly caught; flips in raw fp16 bytes cannot be


def test_wrong_magic_and_version(valid):
    refuse(b"X" + valid[1:], "is not a golfctl quantized artifact")
    refuse(valid[:8] + (3).to_bytes(4, "little") + valid[12:], "version 3")
    refuse(valid[:8] + (1).to_bytes(4, "little") + valid[12:], "header version 2 in a version 1 file")


def test_other_file_kinds_renamed(tmp_path):
    path = tmp_path / "artifact.bin"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="is not a golfctl quantized artifact"):
        read_artifact(path)
    torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)  # a bare pickle
    with pytest.raises(UserError, match="is not a golfctl quantized artifact"):
        read_artifact(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.bin", b"\0" * 100)
    with pytest.raises(UserError, match="is not a golfctl quantized artifact"):
        read_artifact(path)
    with pytest.raises(UserError, match="does not exist"):
        read_artifact(tmp_path / "missing.bin")
    with pytest.raises(UserError, match="folder"):
        read_artifact(tmp_path)


def test_signed_but_invalid_headers(valid):
    """Hostile headers behind a valid checksum: refused by the schema, before any big allocation."""
    header, payload = parts(valid)
    assert resigned(header, payload) != valid and decode_artifact(resigned(header, payload), "x").tensors

    def edit(index: int | None, **changes) -> bytes:
        h = json.loads(json.dumps(header))
        (h if index is None else h["tensors"][index]).update(changes)
        return resigned(h, payload)

    refuse(edit(0, shape=[1 << 20, 1 << 20]), "element count")
    refuse(edit(0, shape=[1 << 200, 1]), "element count")
    refuse(edit(0, shape=[32, 0]), "positive ints")
    refuse(edit(0, shape=[32, -48]), "positive ints")
    refuse(edit(0, shape=[32.0, 48]), "positive ints")
    refuse(edit(0, shape="32x48"), "positive ints")
    refuse(edit(0, shape=[1] * 9), "positive ints")
    refuse(edit(0, data=len(payload) + 1), "runs past")
    refuse(edit(0, data=1 << 62), "runs past")
    refuse(edit(0, data=-1), "runs past")
    refuse(edit(0, data={"offset": 0, "length": 2}), "runs past")
    refuse(edit(0, data=header["tensors"][0]["data"] - 1), "regions hold")
    refuse(edit(0, scales=header["tensors"][0]["scales"] + 1), "runs past|cannot be decoded")
    refuse(edit(0, codec="lzma"), "codec 'lzma'")
    refuse(edit(0, codec="split"), "codec 'split'")  # a float16 codec for integers
    refuse(edit(3, codec="ans"), "codec 'ans'")
    refuse(edit(0, scale_codec=None), "scale_codec None")
    refuse(edit(0, scale_coding=[]), "scale_coding")
    refuse(edit(0, bits=0), "bits")
    refuse(edit(0, bits=9), "bits")
    refuse(edit(0, bits=True), "bits")
    refuse(edit(1, bits=2), "beyond ±1")  # the int4 tensor holds values up to ±7
    refuse(edit(1, name=header["tensors"][0]["name"]), "unique")
    refuse(edit(0, kind="int4"), "kind")
    refuse(edit(0, extra=1), "keys")
    refuse(edit(0, coding={"min": -31, "counts": [1] * 63}), "cannot be decoded")
    refuse(edit(0, coding=[1, 2]), "coding")
    for index, entry in enumerate(header["tensors"]):  # every codec's params: each field of a wrong type, or off by one
        for key, value in entry["coding"].items():
            refuse(edit(index, coding={**entry["coding"], key: "1"}), "cannot be decoded")
            if isinstance(value, int):  # a table is refused; an adaptive stream may decode to other values
                decodes_or_refused(edit(index, coding={**entry["coding"], key: value + 1}))


def decodes_or_refused(data: bytes) -> bool:
    """Damage behind a valid checksum: refused with a UserError, or every tensor has its declared shape.

    True when it decoded."""
    try:
        art = decode_artifact(data, "artifact.bin")
    except UserError:
        return False
    assert all(dequantized_state(art)[t.name].shape == t.shape for t in make_tensors())
    return True
    refuse(edit(None, codec="lzma"), "codec 'lzma'")
    refuse(edit(None, codec=None), "codec None")
    refuse(edit(None, format="golfctl.eval"), "not a golfctl quantized artifact")
    refuse(edit(None, version=1), "header version 1")
    refuse(edit(None, config=[1]), "config")
    refuse(edit(None, tensors={}), "tensors")
    refuse(edit(None, extra=1), "keys")


def test_signed_but_unreadable_headers():
    level = zstandard.ZstdCompressor(level=3)
    bomb = level.compress(b" " * (17 << 20))  # ~1 KiB that claims 17 MiB
    refuse(signed(bomb, b""), "claims")
    unsized = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(b"{}")
    refuse(signed(unsized, b""), "content size")
    refuse(signed(b"not zstd", b""), "unreadable header")
    refuse(signed(level.compress(b"\xff\xfe{}"), b""), "unreadable header")  # not UTF-8
    refuse(signed(level.compress(b"{"), b""), "unreadable header")
    refuse(signed(level.compress(b"[" * 100_000 + b"]" * 100_000), b""), "unreadable header")
    refuse(signed(level.compress(b'{"a": NaN}'), b""), "unreadable header")
    refuse(signed(level.compress(b"[]"), b""), "not a JSON object")
    refuse(signed(b"", b""), "unreadable header")


def test_encode_rejects_bad_tensors():
    q = np.zeros((2, 3), np.int8)
    s = np.ones(2, np.float16)
    with pytest.raises(UserError, match="unknown codec"):
        encode_artifact([], "lzma", {}, {}, {})
    for bad in [
        [QuantizedTensor("a", (2, 3), 6, q, s), QuantizedTensor("a", (2, 3), 6, q, s)],
        [QuantizedTensor("a", (3, 2), 6, q, s)],
        [QuantizedTensor("a", (2, 3), 6, q.astype(np.int16), s)],
        [QuantizedTensor("a", (2, 3), 6, q, s.astype(np.float32))],
        [QuantizedTensor("a", (2, 3), 1, q, s)],
        [QuantizedTensor("a", (2, 3), 2, q + 2, s)],
        [Float16Tensor("b", (4,), np.zeros(3, np.float16))],
    ]:
        with pytest.raises(ValueError):
            encode_artifact(bad, "ans", {}, {}, {})
