"""Lossless coding of quantized integers: ANS entropy coders and a zstd baseline.

A codec turns an int8 matrix (rows, cols) (values in [-qmax, qmax], qmax ≤ 127) into bytes plus
a small JSON-able `params` dict that the decoder needs, and back:

    data, params = codec.encode(q)
    q = codec.decode(data, params, rows, cols)   # exactly that int8 matrix, or ValueError

- `rows`: adaptive ANS with row references (golfctl.adaptive; no symbol table). Each row is
  either coded as it is, or as its difference from an earlier row (the nearest one in L2, when
  that is cheaper): rows of rare tokens in an embedding are near-copies of each other, which an
  order-0 model cannot see. The plain rows' columns are ranked by spread and cut into
  `col_groups` groups, each with its own adaptive model. params = {"min", "max"} of the values,
  {"dmin", "dmax"} of the differences, "ref_bits", the bit length of the largest row distance,
  and "col_groups". The stream holds, in order: per row the bit length of its distance back
  (0: no reference), the distances' low bits, each column's group, the plain rows' values group
  by group (row-major within a group), the referencing rows' differences.

- `ans`: order-0 ANS (constriction's stack `AnsCoder`, 32-bit words stored little-endian).
  params = {"min": smallest value, "counts": [count of min, count of min+1, …, count of max]}.
  The categorical model is rebuilt from the integer counts (as float64, exact for counts below
  2**53) with `perfect=False`, a deterministic function of its input, so encoder and decoder
  hold the identical model. A tensor with one distinct value codes to zero bytes. The coded
  size is within a few bytes of the order-0 bound n·H/8.
- `zstd`: one zstd frame (level 22, content size recorded) over the values shifted to uint8
  (value - min). params = {"min": smallest value}.

Decoding treats `data` and `params` as hostile: every field is validated first, memory stays
proportional to `count`, and every failure is a ValueError with a short reason.
"""

from __future__ import annotations

import math
from typing import Protocol

import constriction
import numpy as np
import zstandard

from golfctl.adaptive import AdaptiveReader, AdaptiveWriter

INT8_MIN, INT8_MAX = -128, 127
MAX_VALUES = 1 << 28  # per tensor and per artifact: bounds what decoding may allocate
MAX_SYMBOLS = 256
ZSTD_LEVEL = 22
# Values coded per constriction call: bounds the int32 temporaries to 4 MiB (encode and decode).
_CHUNK = 1 << 20


class Codec(Protocol):
    name: str

    def encode(self, q: np.ndarray) -> tuple[bytes, dict]: ...

    def decode(self, data: bytes, params: dict, rows: int, cols: int) -> np.ndarray: ...


class FlatCodec:
    """A codec of the flat value stream: rows and cols only set how many values there are."""

    def encode(self, q: np.ndarray) -> tuple[bytes, dict]:
        return self.encode_flat(_as_int8(q))

    def decode(self, data: bytes, params: dict, rows: int, cols: int) -> np.ndarray:
        _check_dims(rows, cols)
        return self.decode_flat(data, params, rows * cols).reshape(rows, cols)


def entropy_bound_bytes(q: np.ndarray) -> float:
    """Order-0 bound n·H(q)/8 in bytes, with H the empirical entropy of q's values in bits."""
    q = np.asarray(q).ravel()
    if q.size == 0:
        return 0.0
    counts = np.unique(q, return_counts=True)[1].astype(np.float64)
    p = counts / q.size
    return float(-(counts * np.log2(p)).sum() / 8.0)


def zstd_decompress_exact(data: bytes, max_size: int) -> bytes:
    """Decompress one zstd frame whose header records a content size of at most `max_size`.

    python-zstandard allocates the size the frame header claims (ignoring `max_output_size`),
    so the claim is checked before anything is allocated; frames without a recorded size and
    trailing bytes after the frame are refused.
    """
    try:
        size = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame ({exc})") from None
    if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise ValueError("zstd frame does not record its content size")
    if size > max_size:
        raise ValueError(f"zstd frame claims {size} bytes, more than the {max_size} allowed")
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt zstd data ({exc})") from None
    if len(out) != size:
        raise ValueError(f"zstd frame holds {len(out)} bytes, its header says {size}")
    return out


def _as_int8(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype != np.int8 or q.ndim != 2:
        raise TypeError(f"codecs take 2-D int8 arrays, got {q.ndim}-D {q.dtype}")
    return np.ascontiguousarray(q).ravel()


def _check_dims(rows, cols) -> None:
    if not (is_int(rows) and is_int(cols) and rows >= 0 and cols >= 0):
        raise ValueError(f"rows and cols must be non-negative ints, got {rows!r}, {cols!r}")
    if rows * cols > MAX_VALUES:
        raise ValueError(f"{rows}×{cols} values pass the limit of {MAX_VALUES}")


def is_int(x) -> bool:
    """A JSON integer of a hostile header: an int, and not a bool (which Python counts as one)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _check_params(params, keys: tuple[str, ...], count) -> int:
    """Validate the fields every codec shares; return the minimum symbol."""
    if not is_int(count) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if not isinstance(params, dict) or sorted(params) != sorted(keys):
        raise ValueError(f"params must be a dict with exactly the keys {list(keys)}")
    low = params["min"]
    if not is_int(low) or not INT8_MIN <= low <= INT8_MAX:
        raise ValueError(f"min must be an int in [{INT8_MIN}, {INT8_MAX}], got {low!r}")
    return low


class AnsCodec(FlatCodec):
    """Order-0 ANS with a per-tensor symbol table of integer counts."""

    name = "ans"

    def encode_flat(self, q: np.ndarray) -> tuple[bytes, dict]:
        if q.size == 0:
            return b"", {"min": 0, "counts": []}
        low = int(q.min())
        counts = np.bincount(q.astype(np.int64) - low)  # (max - min + 1,), ends nonzero
        params = {"min": low, "counts": [int(c) for c in counts]}
        if counts.size == 1:
            return b"", params  # one distinct value carries no information
        model = _model(counts)
        coder = constriction.stream.stack.AnsCoder()
        # A stack decodes last-in first-out: push the chunks back to front so decode runs forward.
        for start in reversed(range(0, q.size, _CHUNK)):
            chunk = q[start:start + _CHUNK].astype(np.int32) - low
            coder.encode_reverse(chunk, model)
        return coder.get_compressed().astype("<u4").tobytes(), params

    def decode_flat(self, data: bytes, params: dict, count: int) -> np.ndarray:
        low = _check_params(params, ("min", "counts"), count)
        counts = params["counts"]
        if not isinstance(counts, list) or len(counts) > MAX_SYMBOLS:
            raise ValueError(f"counts must be a list of at most {MAX_SYMBOLS} ints")
        if not all(is_int(c) and c >= 0 for c in counts):
            raise ValueError("counts must be non-negative ints")
        if sum(counts) != count:
            raise ValueError(f"counts sum to {sum(counts)}, expected {count} values")
        if count and low + len(counts) - 1 > INT8_MAX:
            raise ValueError(f"symbol table min {low} + {len(counts)} symbols exceeds {INT8_MAX}")
        if len(data) % 4:
            raise ValueError(f"ANS data is {len(data)} bytes, not a whole number of 32-bit words")
        nonzero = [i for i, c in enumerate(counts) if c]
        if len(nonzero) <= 1:
            if len(data):
                raise ValueError("a table with one symbol codes to zero bytes, got data")
            return np.full(count, low + (nonzero[0] if nonzero else 0), dtype=np.int8)
        out = np.empty(count, dtype=np.int8)
        try:
            model = _model(np.asarray(counts, dtype=np.int64))
            coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
            for start in range(0, count, _CHUNK):
                n = min(_CHUNK, count - start)
                out[start:start + n] = coder.decode(model, n) + low  # symbols are < len(counts)
            leftover = not coder.is_empty()
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # constriction raises several types, and Rust panics are BaseException
            raise ValueError(f"corrupt ANS data ({type(exc).__name__}: {exc})") from None
        if leftover:
            raise ValueError("corrupt ANS data (bits left over after the last value)")
        decoded = np.bincount(out.astype(np.int64) - low, minlength=len(counts))
        if decoded.tolist() != counts:
            raise ValueError("corrupt ANS data (decoded values do not match the symbol counts)")
        return out


def _model(counts: np.ndarray):
    # perfect=False: fast, deterministic quantization of the probabilities; both sides must agree.
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


class ZstdCodec(FlatCodec):
    """zstd level 22 over value - min as uint8, one frame per tensor."""

    name = "zstd"

    def encode_flat(self, q: np.ndarray) -> tuple[bytes, dict]:
        if q.size == 0:
            return b"", {"min": 0}
        low = int(q.min())
        shifted = (q.astype(np.int16) - low).astype(np.uint8)
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        return compressor.compress(shifted.tobytes()), {"min": low}

    def decode_flat(self, data: bytes, params: dict, count: int) -> np.ndarray:
        low = _check_params(params, ("min",), count)
        if count == 0:
            if len(data):
                raise ValueError("zero values code to zero bytes, got data")
            return np.zeros(0, dtype=np.int8)
        raw = np.frombuffer(zstd_decompress_exact(data, count), dtype=np.uint8)
        if raw.size != count:
            raise ValueError(f"zstd data holds {raw.size} values, expected {count}")
        if int(raw.max()) + low > INT8_MAX:
            raise ValueError(f"values exceed {INT8_MAX} after adding min {low}")
        return (raw.astype(np.int16) + low).astype(np.int8)


DIFF_MIN, DIFF_MAX = INT8_MIN - INT8_MAX, INT8_MAX - INT8_MIN
MAX_COLUMN_GROUPS = 16
_ROW_PARAMS = ("col_groups", "dmax", "dmin", "max", "min", "ref_bits")
_ROW_BLOCK = 1024  # rows per Gram block when searching references: bounds the search's memory
_KT = 0.5  # the estimator's count per symbol when pricing rows
_lgamma = np.vectorize(math.lgamma, otypes=[float])  # over small count tables; spares importing scipy


class RowCodec:
    """Adaptive ANS over rows, each coded plainly or as its difference from an earlier row."""

    name = "rows"

    def encode(self, q: np.ndarray) -> tuple[bytes, dict]:
        flat = _as_int8(q)
        rows, cols = np.shape(q)
        values = flat.reshape(rows, cols).astype(np.int64)
        back = choose_references(values) if values.size else np.zeros(rows, dtype=np.int64)
        referencing = back > 0
        diffs = values[referencing] - values[np.flatnonzero(referencing) - back[referencing]]
        plain = values[~referencing]
        low, high = _span(plain)
        dlow, dhigh = _span(diffs)
        bit_lengths = np.array([int(d).bit_length() for d in back], dtype=np.int64)
        ref_bits = int(bit_lengths.max()) if rows else 0
        writer = AdaptiveWriter()
        writer.symbols(bit_lengths, ref_bits + 1)
        for length in range(1, ref_bits + 1):  # a distance of bit length L: its L-1 bits below the top
            writer.uniform(back[bit_lengths == length] - (1 << (length - 1)), 1 << (length - 1))
        groups = choose_column_groups(plain - low, high - low + 1)
        col_groups = int(groups.max()) + 1 if cols else 1
        writer.symbols(groups, col_groups)
        for group in range(col_groups):  # each group of columns under its own adaptive model
            writer.symbols(plain[:, groups == group] - low, high - low + 1)
        writer.symbols(diffs - dlow, dhigh - dlow + 1)
        params = {"min": low, "max": high, "dmin": dlow, "dmax": dhigh, "ref_bits": ref_bits, "col_groups": col_groups}
        return writer.finish(), params

    def decode(self, data: bytes, params: dict, rows: int, cols: int) -> np.ndarray:
        _check_dims(rows, cols)
        if not isinstance(params, dict) or sorted(params) != sorted(_ROW_PARAMS):
            raise ValueError(f"params must be a dict with exactly the keys {', '.join(_ROW_PARAMS)}")
        low, high = _check_span(params, "min", "max", INT8_MIN, INT8_MAX)
        dlow, dhigh = _check_span(params, "dmin", "dmax", DIFF_MIN, DIFF_MAX)
        ref_bits = params["ref_bits"]
        if not is_int(ref_bits) or not 0 <= ref_bits <= max(rows - 1, 0).bit_length():
            raise ValueError(f"ref_bits must be an int in 0..{max(rows - 1, 0).bit_length()}, got {ref_bits!r}")
        col_groups = params["col_groups"]
        if not is_int(col_groups) or not 1 <= col_groups <= MAX_COLUMN_GROUPS:
            raise ValueError(f"col_groups must be an int in 1..{MAX_COLUMN_GROUPS}, got {col_groups!r}")
        reader = AdaptiveReader(data)
        bit_lengths = reader.symbols(rows, ref_bits + 1)
        back = np.zeros(rows, dtype=np.int64)
        for length in range(1, ref_bits + 1):
            at = bit_lengths == length
            back[at] = (1 << (length - 1)) + reader.uniform(int(at.sum()), 1 << (length - 1))
        if np.any(back > np.arange(rows)):
            raise ValueError("a row refers to a row before the first")
        referencing = back > 0
        out = np.zeros((rows, cols), dtype=np.int64)
        groups = reader.symbols(cols, col_groups)
        plain = np.flatnonzero(~referencing)
        for group in range(col_groups):
            at = np.flatnonzero(groups == group)
            values = reader.symbols(plain.size * at.size, high - low + 1) + low
            out[np.ix_(plain, at)] = values.reshape(plain.size, at.size)
        diffs = (reader.symbols(int(referencing.sum()) * cols, dhigh - dlow + 1) + dlow).reshape(-1, cols)
        reader.finish()
        for diff, row in zip(diffs, np.flatnonzero(referencing)):  # in row order: every reference is decoded
            out[row] = out[row - back[row]] + diff
        if out.size and not INT8_MIN <= int(out.min()) <= int(out.max()) <= INT8_MAX:
            raise ValueError(f"decoded values leave [{INT8_MIN}, {INT8_MAX}]")
        return out.astype(np.int8)


def choose_references(values: np.ndarray) -> np.ndarray:
    """Per row, the distance back to the earlier row it is coded against (0: coded plainly).

    Candidates are each row's nearest earlier row in L2 (exact: integer Gram matrices in float64).
    A row takes its candidate when the difference costs fewer bits than the row itself, both
    priced under order-0 models (the plain rows' values, the referencing rows' differences)
    re-estimated once from the first choice. The decoder never repeats this; any choice decodes.
    """
    rows = values.shape[0]
    x = values.astype(np.float64)
    norms = (x * x).sum(1)
    nearest = np.zeros(rows, dtype=np.int64)
    distance = np.full(rows, np.inf)
    for start in range(1, rows, _ROW_BLOCK):
        end = min(rows, start + _ROW_BLOCK)
        d2 = norms[start:end, None] + norms[None, :end] - 2.0 * (x[start:end] @ x[:end].T)
        d2[np.arange(end - start)[:, None] + start <= np.arange(end)[None, :]] = np.inf  # earlier rows only
        nearest[start:end] = d2.argmin(1)
        distance[start:end] = d2.min(1)
    diffs = values - values[nearest]
    referencing = distance < norms  # first guess: closer to a row than to zero
    for _ in range(2):
        plain_bits = _bits_under(values, values[~referencing])
        diff_bits = _bits_under(diffs, diffs[referencing]) + np.log2(np.arange(rows) + 1) + 2
        referencing = (diff_bits < plain_bits) & (np.arange(rows) > 0)
    return np.where(referencing, np.arange(rows) - nearest, 0)


def choose_column_groups(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Per column, its group (0..G-1): columns ranked by RMS and cut into G equal groups.

    Columns differ in spread (an MLP's down projection has columns of near-dead hidden units),
    and each group gets its own adaptive model. G in 1, 2, 4, 8, 16 is priced by the adaptive
    models' exact code length (Krichevsky–Trofimov, closed form) plus log2(G) bits per column
    for the map, and the cheapest wins.
    """
    cols = symbols.shape[1]
    if not symbols.size:
        return np.zeros(cols, dtype=np.int64)
    center = symbols - symbols.mean()
    rank = np.argsort(np.argsort((center * center).mean(0), kind="stable"), kind="stable")
    best, best_bits = np.zeros(cols, dtype=np.int64), None
    for count in (1, 2, 4, 8, 16):
        if count > min(cols, MAX_COLUMN_GROUPS):
            break
        groups = rank * count // cols
        table = np.bincount((groups * alphabet + symbols).ravel(), minlength=count * alphabet).reshape(count, alphabet)
        bits = _adaptive_bits(table) + cols * np.log2(count)
        if best_bits is None or bits < best_bits:
            best, best_bits = groups, bits
    return best


def _adaptive_bits(table: np.ndarray) -> float:
    """Code length in bits of sequences with these symbol counts (rows: contexts) under KT models."""
    alphabet = table.shape[1]
    totals = table.sum(1)
    nats = (_lgamma(totals + _KT * alphabet) - math.lgamma(_KT * alphabet)
            - (_lgamma(table + _KT) - math.lgamma(_KT)).sum(1))
    return float(nats.sum() / np.log(2))


def _bits_under(values: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Per row of values: bits under the order-0 model of sample (+1/2 per symbol, KT)."""
    low = min(int(values.min()), 0)
    counts = np.bincount((sample.ravel() - low), minlength=int(values.max()) - low + 1) + _KT
    bits = -np.log2(counts / counts.sum())
    return bits[values - low].sum(1)



def _span(values: np.ndarray) -> tuple[int, int]:
    return (int(values.min()), int(values.max())) if values.size else (0, 0)


def _check_span(params: dict, low_key: str, high_key: str, floor: int, ceiling: int) -> tuple[int, int]:
    low, high = params[low_key], params[high_key]
    if not (is_int(low) and is_int(high) and floor <= low <= high <= ceiling):
        raise ValueError(f"{low_key} and {high_key} must be ints with {floor} ≤ {low_key} ≤ {high_key} ≤ {ceiling}")
    return low, high


CODECS: dict[str, Codec] = {"ans": AnsCodec(), "zstd": ZstdCodec(), "rows": RowCodec()}

