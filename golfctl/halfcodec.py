"""Lossless coding of float16 values (row scales, passthrough tensors) as their 16-bit patterns.

    data, params = HALF_CODECS[name].encode(values)     # values: float16 array
    values = HALF_CODECS[name].decode(data, params, count)

- `raw`: 2 bytes per value, little-endian. params = {}.
- `split`: the bit patterns u, less their minimum, split at `shift` bits: the high part is coded
  adaptively (golfctl.adaptive, no table), the low `shift` bits uniformly. A tensor's scales
  span a narrow range of patterns (the same exponent, nearby mantissas), so the high part has few
  symbols; the encoder tries every shift and keeps the smallest. params = {"min", "shift", "top"}
  with top the largest high part.

Decoding validates every field and allocates only `count` values; failures are ValueErrors.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from golfctl.adaptive import MAX_ALPHABET, AdaptiveReader, AdaptiveWriter
from golfctl.codec import is_int

_FP16 = np.dtype("<f2")
U16_MAX = (1 << 16) - 1


class HalfCodec(Protocol):
    name: str

    def encode(self, values: np.ndarray) -> tuple[bytes, dict]: ...

    def decode(self, data: bytes, params: dict, count: int) -> np.ndarray: ...


def _patterns(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype != np.float16:
        raise TypeError(f"half codecs take float16 arrays, got {values.dtype}")
    return np.ascontiguousarray(values, dtype=_FP16).ravel().view("<u2").astype(np.int64)


def _check_count(count) -> None:
    if not (is_int(count) and count >= 0):
        raise ValueError(f"count must be a non-negative int, got {count!r}")


class RawHalfCodec:
    name = "raw"

    def encode(self, values: np.ndarray) -> tuple[bytes, dict]:
        return _patterns(values).astype("<u2").tobytes(), {}

    def decode(self, data: bytes, params: dict, count: int) -> np.ndarray:
        _check_count(count)
        if params != {}:
            raise ValueError("raw float16 takes no params")
        if len(data) != 2 * count:
            raise ValueError(f"{len(data)} bytes of raw float16, expected {2 * count}")
        return np.frombuffer(data, dtype=_FP16).astype(np.float16)


class SplitHalfCodec:
    name = "split"

    def encode(self, values: np.ndarray) -> tuple[bytes, dict]:
        u = _patterns(values)
        low = int(u.min()) if u.size else 0
        best = None
        for shift in range(17):
            top = (int(u.max()) - low) >> shift if u.size else 0
            if top >= MAX_ALPHABET:
                continue
            coded = self._encode(u - low, shift, top)
            if best is None or len(coded) < len(best[0]):
                best = coded, {"min": low, "shift": shift, "top": top}
        return best

    @staticmethod
    def _encode(v: np.ndarray, shift: int, top: int) -> bytes:
        writer = AdaptiveWriter()
        writer.symbols(v >> shift, top + 1)
        writer.uniform(v & ((1 << shift) - 1), 1 << shift)
        return writer.finish()

    def decode(self, data: bytes, params: dict, count: int) -> np.ndarray:
        _check_count(count)
        if not isinstance(params, dict) or sorted(params) != ["min", "shift", "top"]:
            raise ValueError("params must be a dict with exactly the keys min, shift, top")
        low, shift, top = params["min"], params["shift"], params["top"]
        if not all(is_int(x) for x in (low, shift, top)):
            raise ValueError("min, shift and top must be ints")
        if not (0 <= low <= U16_MAX and 0 <= shift <= 16 and 0 <= top < MAX_ALPHABET):
            raise ValueError(f"need 0 ≤ min ≤ {U16_MAX}, 0 ≤ shift ≤ 16, 0 ≤ top < {MAX_ALPHABET}")
        reader = AdaptiveReader(data)
        high = reader.symbols(count, top + 1)
        u = low + (high << shift) + reader.uniform(count, 1 << shift)
        reader.finish()
        if u.size and int(u.max()) > U16_MAX:
            raise ValueError(f"decoded bit patterns pass {U16_MAX}")
        return u.astype("<u2").view(_FP16).astype(np.float16)


HALF_CODECS: dict[str, HalfCodec] = {"raw": RawHalfCodec(), "split": SplitHalfCodec()}
