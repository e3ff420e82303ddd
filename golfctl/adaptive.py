"""Adaptive ANS streams: several symbol segments on one stack coder, with no tables to store.

A writer collects segments in order and `finish()` codes them all onto one constriction
`AnsCoder` (32-bit words, little-endian). A reader decodes the same segments in the same order,
given the same counts and alphabets, and `finish()` checks that no bits are left over.

- `symbols(values, alphabet)`: values in [0, alphabet), coded block-adaptively. Block b uses the
  categorical model (counts of the values before it + 1/2), the Krichevsky–Trofimov estimator,
  so no symbol table is stored: the model costs about (alphabet-1)/2·log2(n) bits, against the
  ~4 bytes a count costs in a JSON table. Blocks start at 4 values and double up to 65,536, so the
  model adapts quickly on small tensors and the per-block Python work stays negligible on large
  ones. Both sides build each model from the same integer counts, so they hold the same one.
- `uniform(values, size)`: values in [0, size), each log2(size) bits (low bits of wide numbers).

An alphabet of one symbol codes to nothing. The reader treats data as hostile: it decodes only
the counts it is given (bounded by the caller), and every failure is a ValueError.
"""

from __future__ import annotations

import constriction
import numpy as np

MAX_ALPHABET = 1024
FIRST_BLOCK = 4
MAX_BLOCK = 1 << 16
_PRIOR = 0.5


def block_bounds(count: int) -> list[tuple[int, int]]:
    """[start, end) of each adaptive block: 4, 4, 8, 16, …, doubling up to 65,536 values."""
    bounds, start, size = [], 0, FIRST_BLOCK
    while start < count:
        end = min(count, start + size)
        bounds.append((start, end))
        size = min(MAX_BLOCK, max(size, end))  # the next block is as long as everything before it
        start = end
    return bounds


def _categorical(counts: np.ndarray):
    # perfect=False: a fast, deterministic fixed-point quantization that both sides repeat exactly.
    return constriction.stream.model.Categorical(counts.astype(np.float64) + _PRIOR, perfect=False)


def _check_alphabet(alphabet: int) -> None:
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet size must be in 1..{MAX_ALPHABET}, got {alphabet}")


class AdaptiveWriter:
    def __init__(self):
        self._segments: list[tuple[str, np.ndarray, int]] = []

    def symbols(self, values: np.ndarray, alphabet: int) -> None:
        _check_alphabet(alphabet)
        values = np.asarray(values, dtype=np.int64).ravel()
        if values.size and not 0 <= int(values.min()) <= int(values.max()) < alphabet:
            raise ValueError(f"symbols must lie in [0, {alphabet})")
        self._segments.append(("adaptive", values, alphabet))

    def uniform(self, values: np.ndarray, size: int) -> None:
        values = np.asarray(values, dtype=np.int64).ravel()
        if values.size and not 0 <= int(values.min()) <= int(values.max()) < size:
            raise ValueError(f"uniform values must lie in [0, {size})")
        self._segments.append(("uniform", values, size))

    def finish(self) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        # A stack decodes last-in first-out: push everything back to front so decoding runs forward.
        for kind, values, alphabet in reversed(self._segments):
            if alphabet == 1 or not values.size:
                continue
            if kind == "uniform":
                coder.encode_reverse(values.astype(np.int32), constriction.stream.model.Uniform(alphabet))
                continue
            bounds = block_bounds(values.size)
            before = np.zeros((len(bounds), alphabet), dtype=np.int64)  # counts before each block
            for i, (start, end) in enumerate(bounds[:-1]):
                before[i + 1] = before[i] + np.bincount(values[start:end], minlength=alphabet)
            for i in reversed(range(len(bounds))):
                start, end = bounds[i]
                coder.encode_reverse(values[start:end].astype(np.int32), _categorical(before[i]))
        return coder.get_compressed().astype("<u4").tobytes()


class AdaptiveReader:
    def __init__(self, data: bytes):
        if len(data) % 4:
            raise ValueError(f"ANS data is {len(data)} bytes, not a whole number of 32-bit words")
        self._coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

    def symbols(self, count: int, alphabet: int) -> np.ndarray:
        _check_alphabet(alphabet)
        out = np.zeros(count, dtype=np.int64)
        if alphabet == 1:
            return out
        counts = np.zeros(alphabet, dtype=np.int64)
        for start, end in block_bounds(count):
            block = self._decode(_categorical(counts), end - start)
            counts += np.bincount(block, minlength=alphabet)
            out[start:end] = block
        return out

    def uniform(self, count: int, size: int) -> np.ndarray:
        if size == 1 or not count:
            return np.zeros(count, dtype=np.int64)
        return self._decode(constriction.stream.model.Uniform(size), count)

    def finish(self) -> None:
        if not self._coder.is_empty():
            raise ValueError("corrupt ANS data (bits left over after the last value)")

    def _decode(self, model, count: int) -> np.ndarray:
        try:
            return self._coder.decode(model, count).astype(np.int64)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # constriction raises several types, and Rust panics are BaseException
            raise ValueError(f"corrupt ANS data ({type(exc).__name__}: {exc})") from None
