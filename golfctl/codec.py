"""Lossless coding of quantized integers: an ANS entropy coder and a zstd baseline.

A codec turns a flat int8 array (values in [-qmax, qmax], qmax ≤ 127) into bytes plus a
small JSON-able `params` dict that the decoder needs, and back:

    data, params = codec.encode(q)
    q = codec.decode(data, params, count)   # exactly `count` int8 values, or ValueError

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

from typing import Protocol

import constriction
import numpy as np
import zstandard

INT8_MIN, INT8_MAX = -128, 127
MAX_SYMBOLS = 256
ZSTD_LEVEL = 22
# Values coded per constriction call: bounds the int32 temporaries to 4 MiB (encode and decode).
_CHUNK = 1 << 20


class Codec(Protocol):
    name: str

    def encode(self, q: np.ndarray) -> tuple[bytes, dict]: ...

    def decode(self, data: bytes, params: dict, count: int) -> np.ndarray: ...


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
    if q.dtype != np.int8:
        raise TypeError(f"codecs take int8 arrays, got {q.dtype}")
    return np.ascontiguousarray(q).ravel()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_params(params, keys: tuple[str, ...], count) -> int:
    """Validate the fields every codec shares; return the minimum symbol."""
    if not _is_int(count) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if not isinstance(params, dict) or sorted(params) != sorted(keys):
        raise ValueError(f"params must be a dict with exactly the keys {list(keys)}")
    low = params["min"]
    if not _is_int(low) or not INT8_MIN <= low <= INT8_MAX:
        raise ValueError(f"min must be an int in [{INT8_MIN}, {INT8_MAX}], got {low!r}")
    return low


class AnsCodec:
    """Order-0 ANS with a per-tensor symbol table of integer counts."""

    name = "ans"

    def encode(self, q: np.ndarray) -> tuple[bytes, dict]:
        q = _as_int8(q)
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

    def decode(self, data: bytes, params: dict, count: int) -> np.ndarray:
        low = _check_params(params, ("min", "counts"), count)
        counts = params["counts"]
        if not isinstance(counts, list) or len(counts) > MAX_SYMBOLS:
            raise ValueError(f"counts must be a list of at most {MAX_SYMBOLS} ints")
        if not all(_is_int(c) and c >= 0 for c in counts):
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


class ZstdCodec:
    """zstd level 22 over value - min as uint8, one frame per tensor."""

    name = "zstd"

    def encode(self, q: np.ndarray) -> tuple[bytes, dict]:
        q = _as_int8(q)
        if q.size == 0:
            return b"", {"min": 0}
        low = int(q.min())
        shifted = (q.astype(np.int16) - low).astype(np.uint8)
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        return compressor.compress(shifted.tobytes()), {"min": low}

    def decode(self, data: bytes, params: dict, count: int) -> np.ndarray:
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


CODECS: dict[str, Codec] = {"ans": AnsCodec(), "zstd": ZstdCodec()}

