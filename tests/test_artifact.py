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

from golfctl.artifact import (CODEC_CHOICES, LQER_SUFFIX, MAGIC, PREFIX_BYTES, Float16Tensor, IntFactor,
                              LowRankCorrection, QuantizedTensor, decode_artifact, dequantized_state, encode_artifact,
                              read_artifact, write_artifact)
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
    refuse(edit(None, codec="lzma"), "codec 'lzma'")
    refuse(edit(None, codec=None), "codec None")
    refuse(edit(None, format="golfctl.eval"), "not a golfctl quantized artifact")
    refuse(edit(None, version=1), "codec 'auto'")  # version 1 had no per-tensor codecs
    refuse(edit(None, config=[1]), "config")
    refuse(edit(None, tensors={}), "tensors")
    refuse(edit(None, extra=1), "keys")
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


# LQER corrections (format 3): A·B added to an int tensor when it is dequantized.

def make_corrections(seed: int = 0) -> list:
    """The tensors of make_tensors plus an asymmetric (int2 A, int4 B in groups of 16) and a symmetric correction."""
    rng = np.random.default_rng(seed + 1)
    tensors = make_tensors(seed)
    asym = LowRankCorrection(
        "blocks.0.attn.qkv.weight",
        IntFactor(rng.integers(-2, 2, (32, 3)).astype(np.int8), np.array([0.02], np.float16), 2, 96, False),
        IntFactor(rng.integers(-8, 8, (3, 48)).astype(np.int8), (rng.random(9) * 0.1).astype(np.float16), 4, 16, False))
    sym = LowRankCorrection(
        "tok_emb.weight",
        IntFactor(rng.integers(-7, 8, (24, 2)).astype(np.int8), rng.random(24).astype(np.float16), 4, 2, True),
        IntFactor(rng.integers(-7, 8, (2, 16)).astype(np.int8), rng.random(2).astype(np.float16), 4, 16, True))
    return [*tensors[:1], asym, *tensors[1:], sym]


@pytest.mark.parametrize("codec", CODEC_CHOICES)
def test_corrections_round_trip_bit_exact(codec):
    tensors = make_corrections()
    data = encode_artifact(tensors, codec, CONFIG, SOURCE, META)
    art = decode_artifact(data, "artifact.bin")
    assert art.version == 3  # and without corrections, version 2:
    assert decode_artifact(encode_artifact(make_tensors(), codec, CONFIG, SOURCE, META), "v2").version == 2
    plain = [t for t in tensors if not isinstance(t, LowRankCorrection)]
    corrections = {t.name: t for t in tensors if isinstance(t, LowRankCorrection)}
    assert list(art.tensors) == [t.name for t in plain] and list(art.corrections) == list(corrections)
    state = dequantized_state(art)
    for name, c in corrections.items():
        back = art.corrections[name]
        for got, want in ((back.a, c.a), (back.b, c.b)):
            assert (got.bits, got.group, got.symmetric) == (want.bits, want.group, want.symmetric)
            assert got.q.dtype == np.int8 and np.array_equal(got.q, want.q) and np.array_equal(got.scales, want.scales)
        t = art.tensors[name]
        base = torch.from_numpy(t.q.astype(np.float32) * t.scales.astype(np.float32)[:, None])
        A = torch.from_numpy(np.repeat(c.a.scales.astype(np.float32), c.a.group).reshape(c.a.q.shape) * c.a.q)
        B = torch.from_numpy(np.repeat(c.b.scales.astype(np.float32), c.b.group).reshape(c.b.q.shape) * c.b.q)
        assert torch.equal(state[name], (base + A @ B).reshape(t.shape))
        stored = art.stored[name + LQER_SUFFIX]
        assert stored.total_bytes > 0 and "/" in stored.describe()
    assert_tensors_equal(art, [t for t in plain if t.name not in corrections])
    assert sum(s.total_bytes for s in art.stored.values()) == art.payload_bytes


def test_encode_rejects_bad_corrections():
    q, s = np.zeros((2, 3), np.int8), np.ones(2, np.float16)
    target = QuantizedTensor("a", (2, 3), 6, q, s)

    def factor(shape, bits=4, group=None, symmetric=True, values=0):
        group = group or shape[1]
        return IntFactor(np.full(shape, values, np.int8), np.ones(shape[0] * shape[1] // group, np.float16), bits,
                         group, symmetric)

    good = LowRankCorrection("a", factor((2, 1)), factor((1, 3)))
    encode_artifact([target, good], "ans", {}, {}, {})
    for bad in [
        [good, target],  # before its tensor
        [target, good, good],  # twice
        [target, LowRankCorrection("a", factor((2, 3)), factor((3, 3)))],  # rank 3 > min(2, 3)
        [target, LowRankCorrection("a", factor((2, 1)), factor((1, 2)))],  # B's shape
        [target, LowRankCorrection("a", factor((2, 1), group=3), factor((1, 3)))],  # group does not divide
        [target, LowRankCorrection("a", factor((2, 1), values=-8), factor((1, 3)))],  # -8 is beyond ±7
        [target, LowRankCorrection("a", factor((2, 1), bits=2, symmetric=False, values=-3), factor((1, 3)))],
    ]:
        with pytest.raises(ValueError):
            encode_artifact(bad, "ans", {}, {}, {})


def test_signed_but_invalid_correction_headers():
    """Hostile "lqer" entries behind a valid checksum: every field type- and range-checked, before allocating."""
    header, payload = parts(encode_artifact(make_corrections(), "auto", CONFIG, SOURCE, META))
    index = next(i for i, e in enumerate(header["tensors"]) if e["kind"] == "lqer")
    assert header["tensors"][index]["name"] == "blocks.0.attn.qkv.weight"

    def edit(changes: dict | None = None, factor: str | None = None, **fields) -> bytes:
        h = json.loads(json.dumps(header))
        entry = h["tensors"][index]
        (entry[factor] if factor else entry).update(changes or fields)
        return resigned(h, payload)

    refuse(edit(rank=0), "rank 0")
    refuse(edit(rank=33), "rank 33")  # min(32, 48) = 32
    refuse(edit(rank=True), "rank True")
    refuse(edit(rank=2.0), "rank 2.0")
    refuse(edit(name="norm.weight"), "does not follow an int tensor")  # an fp16 tensor
    refuse(edit(name="missing"), "does not follow an int tensor")
    refuse(edit(name="tok_emb.weight"), "does not follow an int tensor")  # listed after this entry
    refuse(edit(name=7), "does not follow an int tensor")
    refuse(edit(a=[1]), "factor a is not an object")
    refuse(edit(extra=1), "keys")
    refuse(edit({"extra": 1}, "b"), "factor b is not an object with the keys")
    refuse(edit({"bits": 1}, "a"), "factor a bits 1")
    refuse(edit({"bits": 9}, "b"), "factor b bits 9")
    refuse(edit({"bits": True}, "a"), "factor a bits True")
    refuse(edit({"symmetric": "no"}, "a"), "symmetric 'no'")
    refuse(edit({"group": 0}, "b"), "group 0")
    refuse(edit({"group": 7}, "b"), "group 7")  # does not divide 3·48
    refuse(edit({"group": 16.0}, "b"), "group 16.0")
    refuse(edit({"group": 1 << 62}, "a"), "group")
    refuse(edit({"codec": "lzma"}, "a"), "codec 'lzma'")
    refuse(edit({"codec": "split"}, "b"), "codec 'split'")
    refuse(edit({"scale_codec": "ans"}, "b"), "scale_codec 'ans'")
    refuse(edit({"coding": []}, "a"), "coding")
    refuse(edit({"data": 1 << 62}, "a"), "runs past")
    refuse(edit({"data": -1}, "b"), "runs past")
    refuse(edit({"scales": header["tensors"][index]["b"]["scales"] + 1}, "b"), "runs past|regions hold")
    refuse(edit({"symmetric": True}, "a"), "beyond \\[-1, 1\\]")  # int2 A holds -2: only the full range has it
    refuse(edit({"group": 48}, "b"), "cannot be decoded")  # 3 scales where 9 are stored
    h = json.loads(json.dumps(header))
    h["version"] = 2
    refuse(resigned(h, payload), "kind 'int' or 'fp16'")  # a version 2 file has no corrections
    h["tensors"].append(json.loads(json.dumps(header["tensors"][index])))
    h["version"] = 3
    refuse(resigned(h, payload), "does not follow an int tensor")  # corrected twice
