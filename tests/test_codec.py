"""Integer and float16 codecs: exact round trips, ANS at the entropy bound, and hostile input refused with ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from golfctl.adaptive import AdaptiveReader, AdaptiveWriter, block_bounds
from golfctl.codec import CODECS, entropy_bound_bytes, zstd_decompress_exact
from golfctl.halfcodec import HALF_CODECS


def gaussian_int6(n: int, seed: int = 0, std: float = 8.0, cols: int = 128) -> np.ndarray:
    """round(N(0, 1)·std) clamped to ±31, as (n / cols, cols): the shape of int6-quantized weights."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.standard_normal(n) * std), -31, 31).astype(np.int8).reshape(-1, cols)


def near_copies(rows: int = 64, cols: int = 48, seed: int = 2) -> np.ndarray:
    """An embedding-like matrix: half its rows are one shared row plus ±1 noise (rare tokens), in random places."""
    rng = np.random.default_rng(seed)
    q = np.round(rng.standard_normal((rows, cols)) * 20).astype(np.int64)
    copies = rng.permutation(rows)[: rows // 2]
    q[copies] = q[copies[0]] + rng.integers(-1, 2, (copies.size, cols))
    return np.clip(q, -127, 127).astype(np.int8)


SAMPLES = {
    "gaussian": gaussian_int6(80 * 128),
    "near copies": near_copies(),
    "wide": np.random.default_rng(1).integers(-127, 128, 5_000).astype(np.int8).reshape(50, 100),
    "extremes": np.array([[-128, 127], [0, -128], [127, -128]], dtype=np.int8),
    "constant": np.full((10, 100), -7, dtype=np.int8),
    "single": np.array([[31]], dtype=np.int8),
    "empty": np.zeros((0, 5), dtype=np.int8),
}


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_round_trip(codec, sample):
    q = SAMPLES[sample]
    data, params = CODECS[codec].encode(q)
    assert isinstance(data, bytes)
    back = CODECS[codec].decode(data, params, *q.shape)
    assert back.dtype == np.int8 and np.array_equal(back, q)
    assert CODECS[codec].encode(q) == (data, params)  # deterministic


def test_constant_codes_to_nothing_with_ans():
    data, params = CODECS["ans"].encode(SAMPLES["constant"])
    assert data == b"" and params == {"min": -7, "counts": [1000]}
    data, params = CODECS["rows"].encode(SAMPLES["constant"])
    assert len(data) < 16 and params["min"] == params["max"] == -7  # rows 1.. refer back, with zero differences


def test_entropy_bound():
    assert entropy_bound_bytes(np.zeros(0, np.int8)) == 0.0
    assert entropy_bound_bytes(np.full(10, 3, np.int8)) == 0.0
    assert entropy_bound_bytes(np.array([0, 1] * 8, np.int8)) == pytest.approx(2.0)  # 16 values × 1 bit


def test_ans_within_one_percent_of_bound():
    q = gaussian_int6(1 << 20)
    data, _ = CODECS["ans"].encode(q)
    bound = entropy_bound_bytes(q)
    assert len(data) / bound < 1.01
    zstd_data, _ = CODECS["zstd"].encode(q)
    print(f"\n1M int6: bound {bound:.0f} B, ans {len(data)} B ({len(data) / bound:.5f}×), "
          f"zstd {len(zstd_data)} B ({len(zstd_data) / bound:.4f}×)")


def _assert_value_error(codec, data, params, rows, cols=100):
    with pytest.raises(ValueError):
        CODECS[codec].decode(data, params, rows, cols)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_bad_params(codec):
    q = SAMPLES["near copies" if codec == "rows" else "gaussian"]
    rows, cols = q.shape
    data, params = CODECS[codec].encode(q)
    bad = [None, [], {}, {**params, "extra": 1}, {**params, "min": "0"}, {**params, "min": True},
           {**params, "min": 128}, {**params, "min": -129}, {**params, "min": 1.0}]
    if codec == "ans":
        counts = params["counts"]
        bad += [{**params, "counts": counts[:-1] + [counts[-1] + 1]},  # sum off by one
                {**params, "counts": counts[::-1]},  # right sum, wrong table
                {**params, "counts": [counts[0] - 1, 1] + counts[1:-1] + [counts[-1]]},
                {**params, "counts": [-1] + counts[:-1] + [counts[-1] + 1]},
                {**params, "counts": [float(c) for c in counts]},
                {**params, "counts": [0] * 300 + counts},
                {**params, "counts": "1,2"},
                {"min": 120, "counts": counts}]  # table runs past 127
    elif codec == "rows":
        bad += [{**params, "max": 128}, {**params, "max": params["min"] - 1}, {**params, "dmin": -255},
                {**params, "dmax": 255}, {**params, "dmax": None}, {**params, "ref_bits": rows.bit_length() + 1},
                {**params, "ref_bits": -1}, {**params, "ref_bits": 1 << 40}, {**params, "col_groups": 0},
                {**params, "col_groups": 17}]
    else:
        bad += [{"min": 100}]  # shifted values pass 127
    for p in bad:
        _assert_value_error(codec, data, p, rows, cols)
    # Too few values leave bits over. An adaptive stream read past its end decodes on from the
    # coder's initial state, so too many is refused by the tables of ans and zstd only (in an
    # artifact, the sha256 over header and payload guards the shapes).
    too_many = [(rows + 1, cols)] if codec != "rows" else []
    for shape in ((rows - 1, cols), *too_many, (-1, cols), (rows, 1.0), (1 << 40, cols)):
        _assert_value_error(codec, data, params, *shape)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_corrupt_data(codec):
    q = SAMPLES["near copies" if codec == "rows" else "gaussian"]
    data, params = CODECS[codec].encode(q)
    rng = np.random.default_rng(5)
    candidates = [b"", data[:-4], data[:-1], data + b"\0\0\0\0", data + b"\1\0\0\0", data[4:],
                  rng.bytes(len(data)), b"\0" * len(data), b"\xff" * 64]
    for _ in range(100):
        raw = bytearray(data)
        raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        candidates.append(bytes(raw))
    refused = 0
    for bad in candidates:
        if codec == "ans":  # trailing-state and symbol-count checks catch every change
            _assert_value_error(codec, bad, params, *q.shape)
            continue
        # zstd frames and adaptive streams carry no checksum (the artifact's sha256 covers them):
        # a flip can decode to other values, but never to another shape, type or range.
        try:
            back = CODECS[codec].decode(bad, params, *q.shape)
        except ValueError:
            refused += 1
            continue
        assert back.dtype == np.int8 and back.shape == q.shape
        if codec == "rows":
            assert params["min"] - 2 * 127 <= back.min() and back.max() <= 127
    assert codec != "rows" or refused > len(candidates) // 2  # the leftover-bits check catches most


def test_ans_single_symbol_and_empty_refuse_data():
    _assert_value_error("ans", b"\1\0\0\0", {"min": 0, "counts": [5]}, 1, 5)
    _assert_value_error("ans", b"\1\0\0\0", {"min": 0, "counts": []}, 0, 5)
    _assert_value_error("zstd", b"\1", {"min": 0}, 0, 5)
    _assert_value_error("rows", b"\1\0\0\0", {"min": 0, "max": 0, "dmin": 0, "dmax": 0, "ref_bits": 0, "col_groups": 1},
                        1, 5)


def test_zstd_refuses_oversized_and_unsized_frames():
    big = zstandard.ZstdCompressor().compress(b"\0" * (1 << 20))
    with pytest.raises(ValueError, match="claims"):
        zstd_decompress_exact(big, 1000)
    _assert_value_error("zstd", big, {"min": 0}, 10, 100)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 1000)
    with pytest.raises(ValueError, match="content size"):
        zstd_decompress_exact(unsized, 1000)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_encode_requires_2d_int8(codec):
    for bad in (np.zeros((3, 3), np.int32), np.zeros(3, np.int8)):
        with pytest.raises(TypeError):
            CODECS[codec].encode(bad)


def test_rows_codes_near_copies_far_below_order_0():
    """Rows that repeat an earlier row up to ±1 cost about their differences, not their values."""
    q = near_copies(rows=256, cols=128)
    data, params = CODECS["rows"].encode(q)
    assert np.array_equal(CODECS["rows"].decode(data, params, *q.shape), q)
    assert len(data) < 0.7 * entropy_bound_bytes(q) and (params["dmin"], params["dmax"]) == (-2, 2)
    plain = gaussian_int6(256 * 128, seed=4, cols=128)  # independent rows: nothing to refer to
    data, params = CODECS["rows"].encode(plain)
    assert params["ref_bits"] == 0 and len(data) < 1.01 * entropy_bound_bytes(plain) + 300


def test_rows_groups_columns_by_spread():
    """Columns of near-dead units (a quarter here, spread 1 instead of 8) get their own models."""
    q = gaussian_int6(512 * 128, seed=6).astype(np.int64)
    dead = np.random.default_rng(6).permutation(128)[:32]
    q[:, dead] = np.round(q[:, dead] / 8)
    q = q.astype(np.int8)
    data, params = CODECS["rows"].encode(q)
    assert np.array_equal(CODECS["rows"].decode(data, params, *q.shape), q)
    assert params["col_groups"] > 1 and len(data) < 0.95 * entropy_bound_bytes(q)  # 0.92 here


def test_rows_refuses_references_before_the_first_row():
    """A row distance is coded in bits; one that points above row 0 is refused, never read out of bounds."""
    q = near_copies(rows=8, cols=4)
    writer = AdaptiveWriter()
    writer.symbols(np.array([0, 0, 0, 3, 0, 0, 0, 0]), 4)  # row 3: a distance of bit length 3 (4..7)
    writer.uniform(np.array([3]), 4)  # distance 7 from row 3
    writer.symbols(np.zeros(4, np.int64), 1)  # one group of columns
    writer.symbols(q[[0, 1, 2, 4, 5, 6, 7]].astype(np.int64).ravel() + 128, 256)
    writer.symbols(np.zeros(4, np.int64), 1)
    params = {"min": -128, "max": 127, "dmin": 0, "dmax": 0, "ref_bits": 3, "col_groups": 1}
    with pytest.raises(ValueError, match="before the first"):
        CODECS["rows"].decode(writer.finish(), params, 8, 4)


def test_adaptive_blocks_and_streams():
    assert block_bounds(0) == [] and block_bounds(3) == [(0, 3)]
    assert block_bounds(100) == [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 100)]
    bounds = block_bounds(1 << 20)
    assert bounds[-1][1] == 1 << 20 and max(end - start for start, end in bounds) == 1 << 16
    rng = np.random.default_rng(0)
    segments = [(rng.integers(0, 5, 1000), 5), (np.zeros(7, np.int64), 1), (rng.integers(0, 300, 50), 300)]
    writer = AdaptiveWriter()
    for values, alphabet in segments:
        writer.symbols(values, alphabet)
    writer.uniform(np.array([5, 0, 7]), 8)
    reader = AdaptiveReader(writer.finish())
    for values, alphabet in segments:
        assert np.array_equal(reader.symbols(values.size, alphabet), values)
    assert reader.uniform(3, 8).tolist() == [5, 0, 7]
    reader.finish()
    for bad in ((np.array([5]), 5), (np.array([-1]), 5), (np.array([0]), 0), (np.array([0]), 1 << 20)):
        with pytest.raises(ValueError):
            AdaptiveWriter().symbols(*bad)
    with pytest.raises(ValueError, match="32-bit words"):
        AdaptiveReader(b"\0\0\0")


def _half_samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"scales": (0.02 + 0.005 * rng.random(300)).astype(np.float16),
            "signed": rng.standard_normal(257).astype(np.float16),
            "specials": np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 6e-8], np.float16),
            "one": np.array([1.5], np.float16), "empty": np.zeros(0, np.float16)}


@pytest.mark.parametrize("codec", sorted(HALF_CODECS))
def test_half_round_trip_bit_exact(codec):
    for values in _half_samples().values():
        data, params = HALF_CODECS[codec].encode(values)
        back = HALF_CODECS[codec].decode(data, params, values.size)
        assert back.dtype == np.float16 and np.array_equal(back.view(np.uint16), values.view(np.uint16))
    scales = _half_samples()["scales"]
    if codec == "split":  # a narrow band of bit patterns codes well below 16 bits each
        assert len(HALF_CODECS[codec].encode(scales)[0]) < 0.75 * scales.nbytes


def test_half_hostile_input():
    values = _half_samples()["scales"]
    data, params = HALF_CODECS["split"].encode(values)
    for p in (None, {}, {**params, "extra": 0}, {**params, "min": -1}, {**params, "min": 1 << 16},
              {**params, "shift": 17}, {**params, "top": 1 << 20}, {**params, "top": 1.0}, {**params, "shift": True}):
        with pytest.raises(ValueError):
            HALF_CODECS["split"].decode(data, p, values.size)
    with pytest.raises(ValueError, match="pass 65535"):  # patterns beyond 16 bits
        HALF_CODECS["split"].decode(data, {**params, "min": 65535 - 2}, values.size)
    for count in (values.size - 1, -1):
        with pytest.raises(ValueError):
            HALF_CODECS["split"].decode(data, params, count)
    with pytest.raises(ValueError):
        HALF_CODECS["raw"].decode(b"\0" * 5, {}, 3)
    with pytest.raises(ValueError):
        HALF_CODECS["raw"].decode(b"\0" * 6, {"x": 1}, 3)
    with pytest.raises(TypeError):
        HALF_CODECS["split"].encode(values.astype(np.float32))
