"""The quantized artifact (`artifact.bin`): entropy-coded integer weights, scales and fp16 tensors.

No pickle: reading an artifact never executes code, and the reader checks every length and shape
before it allocates. Byte layout (all integers little-endian):

    offset 0    8 bytes   magic b"GOLFQ\\x00\\x01\\x00"
    offset 8    u32       format version (2, or 3 when it holds LQER corrections; version 1 is still read)
    offset 12   u32       H = length of the compressed header
    offset 16   u64       P = length of the payload
    offset 24   32 bytes  sha256 over (compressed header bytes + payload bytes)
    offset 56   H bytes   header: UTF-8 JSON (sorted keys), zstd level 19
    offset 56+H P bytes   payload: the tensors' regions, back to back in header order

The file is exactly 56 + H + P bytes. The version 2 and 3 header JSON is

    {"format": "golfctl.quantized", "version": 2 | 3,
     "codec": "auto" | an integer codec,           # the quantize setting that chose the codecs
     "config": {…}, "source": {…}, "meta": {…},     # opaque dicts (model config, input sha256, …)
     "tensors": [entry, …]}                          # payload order

and each tensor entry is one of

    {"name", "shape": [d0, …], "kind": "int", "bits": 2..8,
     "codec": "ans" | "rows" | "zstd", "coding": {…}, "data": length,          # the integers
     "scale_codec": "raw" | "split", "scale_coding": {…}, "scales": length}   # per-row float16 scales
    {"name", "shape": [d0, …], "kind": "fp16",
     "codec": "raw" | "split", "coding": {…}, "data": length}                  # the float16 values
    {"name", "kind": "lqer", "rank": r, "a": factor, "b": factor}            # version 3 only

An "lqer" entry is a low-rank correction A·B (golfctl.lqer) of the int tensor `name`, listed
earlier, of (rows, cols): A is (rows, r), B is (r, cols), 1 ≤ r ≤ min(rows, cols). Each factor is

    {"bits": 2..8, "symmetric": bool, "group": g,
     "codec", "coding", "data",                      # its integers, as an int tensor's
     "scale_codec", "scale_coding", "scales"}        # one float16 scale per group

its integers in [-qmax, qmax] (symmetric) or [-qmax-1, qmax] (the full two's-complement range),
one scale for each `group` consecutive integers of the factor flattened row-major (g divides its
size); its value is q · (its group's scale). Regions come in the order A data, A scales, B data,
B scales. The tensor's value is then q · (row scale) + A·B, in float32. A writer uses version 3
only for a file with an "lqer" entry, so a file without one stays readable by version-2 readers.

Each tensor picks its own codecs (golfctl.codec for integers, golfctl.halfcodec for float16);
`coding` holds what that codec needs. The payload is the regions in entry order, in sum exactly
P bytes. An int tensor of shape (d0, d1, …) is a (rows, cols) = (d0, d1·…) matrix of integers in
[-qmax, qmax], qmax = 2**(bits-1) - 1; its value is q · scale of its row.

Version 1 had one codec for every int tensor at the top level, raw float16 scales and values,
and regions given as {"offset", "length"} (inside the payload, not overlapping).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zstandard

from golfctl.codec import CODECS, MAX_VALUES, is_int, zstd_decompress_exact
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes
from golfctl.halfcodec import HALF_CODECS

MAGIC = b"GOLFQ\x00\x01\x00"
VERSION = 2  # written when no tensor needs a newer one
LQER_VERSION = 3  # the first version with "lqer" entries
READABLE_VERSIONS = (1, 2, 3)
FORMAT = "golfctl.quantized"
AUTO = "auto"
AUTO_CODECS = ("ans", "rows")  # what `auto` tries per tensor (zstd never wins on these integers)
CODEC_CHOICES = (AUTO, *CODECS)
_PREFIX = struct.Struct("<8sIIQ32s")  # magic, version, header length, payload length, sha256
PREFIX_BYTES = _PREFIX.size  # 56
HEADER_LEVEL = 19
MAX_HEADER_BYTES = 16 << 20  # decompressed header JSON
MAX_ELEMENTS = MAX_VALUES  # all tensors together: bounds what decoding may allocate
MAX_NDIM = 8
_FP16 = np.dtype("<f2")
_REMAKE = "re-run golfctl quantize"
_TOP_KEYS = {"format", "version", "codec", "config", "source", "meta", "tensors"}
_ENTRY_KEYS = {
    1: {"int": {"name", "shape", "kind", "bits", "data", "coding", "scales"}, "fp16": {"name", "shape", "kind", "data"}},
    2: {"int": {"name", "shape", "kind", "bits", "codec", "coding", "data", "scale_codec", "scale_coding", "scales"},
        "fp16": {"name", "shape", "kind", "codec", "coding", "data"}},
}
_ENTRY_KEYS[3] = {**_ENTRY_KEYS[2], "lqer": {"name", "kind", "rank", "a", "b"}}
_FACTOR_KEYS = {"bits", "symmetric", "group", "codec", "coding", "data", "scale_codec", "scale_coding", "scales"}
LQER_SUFFIX = ".lqer"  # `Artifact.stored` key of the correction of tensor NAME: NAME + LQER_SUFFIX


@dataclass
class QuantizedTensor:
    """Integers q (rows, cols) int8 in [-qmax, qmax] with one float16 scale per row; value = q · scale."""

    name: str
    shape: tuple
    bits: int
    q: np.ndarray
    scales: np.ndarray


@dataclass
class Float16Tensor:
    """A tensor kept as float16 values (decoded with the tensor's shape)."""

    name: str
    shape: tuple
    values: np.ndarray


@dataclass
class IntFactor:
    """Integers q (rows, cols) int8 with one float16 scale per `group` consecutive values of q
    flattened row-major; value = q · scale. q is in [-qmax, qmax] if `symmetric`, else in the
    full two's-complement range [-qmax-1, qmax]."""

    q: np.ndarray
    scales: np.ndarray
    bits: int
    group: int
    symmetric: bool

    def values(self) -> np.ndarray:
        """float32 (rows, cols) = q · (its group's scale)."""
        grouped = self.q.reshape(-1, self.group).astype(np.float32) * self.scales.astype(np.float32)[:, None]
        return grouped.reshape(self.q.shape)


@dataclass
class LowRankCorrection:
    """A·B added to the int tensor `name` (rows, cols) when it is dequantized: A (rows, rank), B (rank, cols)."""

    name: str
    a: IntFactor
    b: IntFactor


@dataclass(frozen=True)
class Stored:
    """How one tensor is stored: its codecs and the payload bytes of each region."""

    codec: str
    data_bytes: int
    scale_codec: str | None = None  # None: an fp16 tensor, which has no scales
    scale_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.scale_bytes

    def describe(self) -> str:
        return self.codec if self.scale_codec is None else f"{self.codec}+{self.scale_codec}"


@dataclass
class Artifact:
    codec: str  # the quantize setting: `auto` or one integer codec for every tensor
    config: dict
    source: dict
    meta: dict
    tensors: dict[str, QuantizedTensor | Float16Tensor] = field(default_factory=dict)
    corrections: dict[str, LowRankCorrection] = field(default_factory=dict)  # by the name of the tensor corrected
    header_bytes: int = 0  # compressed header size
    payload_bytes: int = 0
    stored: dict[str, Stored] = field(default_factory=dict)  # tensors, and corrections under NAME + LQER_SUFFIX
    version: int = VERSION


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def factor_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(lowest, highest) integer of an IntFactor."""
    return -qmax(bits) if symmetric else -qmax(bits) - 1, qmax(bits)


def matrix_shape(shape: tuple) -> tuple[int, int]:
    """(rows, cols) of an int tensor: the first dimension by the product of the rest."""
    rows = shape[0]
    return rows, math.prod(shape) // rows


# --- writing -------------------------------------------------------------------------------


def encode_artifact(tensors: list, codec: str, config: dict, source: dict, meta: dict) -> bytes:
    """Serialize tensors (QuantizedTensor | Float16Tensor | LowRankCorrection, in payload order) to
    artifact bytes; a correction comes after the int tensor it corrects.

    `codec` is `auto` (each int tensor and factor takes the smallest of AUTO_CODECS) or one integer
    codec for all; float16 scales and values always take the smaller half codec. Deterministic: the
    same inputs give the same bytes. Version 3 if there is a correction, else 2.
    """
    if codec not in CODEC_CHOICES:
        raise UserError(f"unknown codec {codec!r}; choose one of: {', '.join(CODEC_CHOICES)}")
    for label, value in (("config", config), ("source", source), ("meta", meta)):
        if not isinstance(value, dict):
            raise TypeError(f"{label} must be a dict, got {type(value).__name__}")
    payload = bytearray()
    entries = []
    names = set()
    int_shapes: dict[str, tuple[int, int]] = {}  # int tensor → (rows, cols), for its correction
    corrected = set()
    int_codecs = AUTO_CODECS if codec == AUTO else (codec,)
    for t in tensors:
        if isinstance(t, LowRankCorrection):
            if t.name not in int_shapes or t.name in corrected:
                raise ValueError(f"{t.name}: a correction follows its int tensor, once")
            corrected.add(t.name)
            entries.append(_correction_entry(t, int_shapes[t.name], int_codecs, payload))
            continue
        if not isinstance(t.name, str) or t.name in names:
            raise ValueError(f"tensor names must be unique strings, got {t.name!r}")
        names.add(t.name)
        shape = tuple(t.shape)
        if not all(isinstance(d, int) and d > 0 for d in shape) or len(shape) > MAX_NDIM:
            raise ValueError(f"{t.name}: shape {shape} must be at most {MAX_NDIM} positive ints")
        entry = {"name": t.name, "shape": list(shape)}
        if isinstance(t, QuantizedTensor):
            _check_int(t, shape)
            entry.update(kind="int", bits=t.bits)
            entry.update(_smallest(CODECS, int_codecs, t.q, payload))
            scales = _smallest(HALF_CODECS, HALF_CODECS, t.scales, payload)
            entry.update(scale_codec=scales["codec"], scale_coding=scales["coding"], scales=scales["data"])
            int_shapes[t.name] = matrix_shape(shape)
        elif isinstance(t, Float16Tensor):
            values = np.asarray(t.values)
            numel = math.prod(shape)
            if values.dtype != np.float16 or values.size != numel:
                raise ValueError(f"{t.name}: values must be {numel} float16, got {values.size} {values.dtype}")
            entry.update(kind="fp16", **_smallest(HALF_CODECS, HALF_CODECS, values.ravel(), payload))
        else:
            raise TypeError(f"expected QuantizedTensor, Float16Tensor or LowRankCorrection, got {type(t).__name__}")
        entries.append(entry)
    version = LQER_VERSION if corrected else VERSION
    header = {"format": FORMAT, "version": version, "codec": codec, "config": config, "source": source,
              "meta": meta, "tensors": entries}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    compressed = zstandard.ZstdCompressor(level=HEADER_LEVEL, write_content_size=True).compress(text.encode("utf-8"))
    return _sign(compressed, bytes(payload), version)


def _check_int(t: QuantizedTensor, shape: tuple) -> None:
    if not isinstance(t.bits, int) or not 2 <= t.bits <= 8:
        raise ValueError(f"{t.name}: bits must be in 2..8, got {t.bits!r}")
    rows, cols = matrix_shape(shape)
    q, scales = np.asarray(t.q), np.asarray(t.scales)
    if q.dtype != np.int8 or q.shape != (rows, cols):
        raise ValueError(f"{t.name}: q must be int8 of shape {(rows, cols)}, got {q.dtype} {q.shape}")
    if scales.dtype != np.float16 or scales.shape != (rows,):
        raise ValueError(f"{t.name}: scales must be float16 of shape {(rows,)}, got {scales.dtype} {scales.shape}")
    if q.size and not -qmax(t.bits) <= int(q.min()) <= int(q.max()) <= qmax(t.bits):
        raise ValueError(f"{t.name}: values exceed ±{qmax(t.bits)} for {t.bits} bits")


def _correction_entry(t: LowRankCorrection, target: tuple[int, int], int_codecs, payload: bytearray) -> dict:
    rows, cols = target
    rank = np.asarray(t.a.q).shape[-1] if np.asarray(t.a.q).ndim == 2 else 0
    if not 1 <= rank <= min(rows, cols):
        raise ValueError(f"{t.name}: correction rank {rank} is not in 1..{min(rows, cols)}")
    entry = {"name": t.name, "kind": "lqer", "rank": rank}
    for key, factor, shape in (("a", t.a, (rows, rank)), ("b", t.b, (rank, cols))):
        _check_factor(t.name, key, factor, shape)
        coded = _smallest(CODECS, int_codecs, factor.q, payload)
        scales = _smallest(HALF_CODECS, HALF_CODECS, factor.scales, payload)
        entry[key] = {"bits": factor.bits, "symmetric": factor.symmetric, "group": factor.group, **coded,
                      "scale_codec": scales["codec"], "scale_coding": scales["coding"], "scales": scales["data"]}
    return entry


def _check_factor(name: str, key: str, f: IntFactor, shape: tuple[int, int]) -> None:
    where = f"{name}: correction factor {key}"
    q, scales = np.asarray(f.q), np.asarray(f.scales)
    if q.dtype != np.int8 or q.shape != shape:
        raise ValueError(f"{where} must be int8 of shape {shape}, got {q.dtype} {q.shape}")
    if not (isinstance(f.bits, int) and 2 <= f.bits <= 8 and isinstance(f.symmetric, bool)):
        raise ValueError(f"{where}: bits must be in 2..8 and symmetric a bool, got {f.bits!r}, {f.symmetric!r}")
    if not (isinstance(f.group, int) and f.group >= 1 and q.size % f.group == 0):
        raise ValueError(f"{where}: group {f.group!r} does not divide its {q.size} values")
    if scales.dtype != np.float16 or scales.shape != (q.size // f.group,):
        raise ValueError(f"{where}: scales must be float16 of shape {(q.size // f.group,)}, got "
                         f"{scales.dtype} {scales.shape}")
    low, high = factor_range(f.bits, f.symmetric)
    if not low <= int(q.min()) <= int(q.max()) <= high:
        raise ValueError(f"{where}: values exceed [{low}, {high}]")


def _smallest(registry: dict, names, values: np.ndarray, payload: bytearray) -> dict:
    """Code values with each named codec; append the smallest (data + its JSON params) to the payload."""
    best = None
    for name in names:
        data, params = registry[name].encode(values)
        cost = len(data) + len(json.dumps(params, separators=(",", ":")))
        if best is None or cost < best[0]:  # ties keep the earlier codec: deterministic
            best = cost, name, data, params
    _, name, data, params = best
    payload.extend(data)
    return {"codec": name, "coding": params, "data": len(data)}


def _sign(header: bytes, payload: bytes, version: int) -> bytes:
    digest = hashlib.sha256(header + payload).digest()
    return _PREFIX.pack(MAGIC, version, len(header), len(payload), digest) + header + payload


def write_artifact(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_bytes(path, data)


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    """A validated tensor entry, the same for both versions: codecs, params and payload regions."""

    entry: dict
    codec: str
    coding: dict
    data: tuple[int, int]  # (offset, length) in the payload
    scale_codec: str | None = None
    scale_coding: dict | None = None
    scales: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class _PlacedCorrection:
    """A validated "lqer" entry: the (rows, cols) of the tensor it corrects, and its two factors'
    regions (each a _Placed whose entry is the factor object)."""

    entry: dict
    target: tuple[int, int]
    a: _Placed
    b: _Placed


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Validate and decode an artifact file; every problem is a UserError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            _check_prefix(f.read(PREFIX_BYTES), size, str(path))  # before reading a possibly huge file
            f.seek(0)
            data = f.read(size + 1)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run golfctl quantize first") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a quantized artifact") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc})") from None
    return decode_artifact(data, str(path))


def decode_artifact(data: bytes, origin: str) -> Artifact:
    """Validate and decode artifact bytes; `origin` names them in error messages."""
    version, header_len, payload_len, digest = _check_prefix(data[:PREFIX_BYTES], len(data), origin)
    body = memoryview(data)[PREFIX_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise UserError(f"{origin} is truncated or corrupt (checksum mismatch); {_REMAKE}")
    payload = body[header_len:]
    header = _load_header(body[:header_len], origin)
    placed = _check_header(header, version, payload_len, origin)
    tensors, corrections, stored = {}, {}, {}
    for p in placed:
        name = p.entry["name"]
        try:
            if isinstance(p, _PlacedCorrection):
                corrections[name] = _decode_correction(p, name, payload)
            else:
                tensors[name] = _decode_tensor(p, name, tuple(p.entry["shape"]), payload)
        except ValueError as exc:
            what = "the correction of tensor" if isinstance(p, _PlacedCorrection) else "tensor"
            raise UserError(f"{origin}: {what} {name!r} cannot be decoded ({exc}); {_REMAKE}") from None
        if isinstance(p, _PlacedCorrection):
            stored[name + LQER_SUFFIX] = Stored(f"{p.a.codec}/{p.b.codec}", p.a.data[1] + p.b.data[1],
                                                f"{p.a.scale_codec}/{p.b.scale_codec}", p.a.scales[1] + p.b.scales[1])
        else:
            stored[name] = Stored(p.codec, p.data[1], p.scale_codec, p.scales[1])
    return Artifact(codec=header["codec"], config=header["config"], source=header["source"], meta=header["meta"],
                    tensors=tensors, corrections=corrections, header_bytes=header_len, payload_bytes=payload_len,
                    stored=stored, version=version)


def _decode_tensor(p: _Placed, name: str, shape: tuple, payload) -> QuantizedTensor | Float16Tensor:
    numel = math.prod(shape)
    data = bytes(_slice(payload, p.data))
    if p.entry["kind"] == "fp16":
        return Float16Tensor(name, shape, HALF_CODECS[p.codec].decode(data, p.coding, numel).reshape(shape))
    rows, cols = matrix_shape(shape)
    q = CODECS[p.codec].decode(data, p.coding, rows, cols)
    limit = qmax(p.entry["bits"])
    if q.size and not -limit <= int(q.min()) <= int(q.max()) <= limit:
        raise ValueError(f"values beyond ±{limit} for {p.entry['bits']} bits")
    scales = HALF_CODECS[p.scale_codec].decode(bytes(_slice(payload, p.scales)), p.scale_coding, rows)
    if not np.isfinite(scales).all():
        raise ValueError("non-finite scales")
    return QuantizedTensor(name, shape, p.entry["bits"], q.reshape(rows, cols), scales)


def _decode_correction(p: _PlacedCorrection, name: str, payload) -> LowRankCorrection:
    rows, cols = p.target
    rank = p.entry["rank"]
    a, b = (_decode_factor(f, shape, payload) for f, shape in ((p.a, (rows, rank)), (p.b, (rank, cols))))
    return LowRankCorrection(name, a, b)


def _decode_factor(p: _Placed, shape: tuple[int, int], payload) -> IntFactor:
    f = p.entry
    q = CODECS[p.codec].decode(bytes(_slice(payload, p.data)), p.coding, *shape)
    low, high = factor_range(f["bits"], f["symmetric"])
    if q.size and not low <= int(q.min()) <= int(q.max()) <= high:
        raise ValueError(f"factor values beyond [{low}, {high}]")
    scales = HALF_CODECS[p.scale_codec].decode(bytes(_slice(payload, p.scales)), p.scale_coding, q.size // f["group"])
    if not np.isfinite(scales).all():
        raise ValueError("non-finite factor scales")
    return IntFactor(q.reshape(shape), scales, f["bits"], f["group"], f["symmetric"])


def dequantized_state(artifact: Artifact) -> dict[str, torch.Tensor]:
    """float32 tensors by name: int tensors as q · (row scale) + their correction A·B if any (the
    product in float32, added after the scaling, as the 2026-04-27 record does), fp16 tensors widened."""
    state = {}
    for name, t in artifact.tensors.items():
        if isinstance(t, QuantizedTensor):
            values = torch.from_numpy(t.q.astype(np.float32) * t.scales.astype(np.float32)[:, None])  # (rows, cols)
            correction = artifact.corrections.get(name)
            if correction is not None:
                values += torch.from_numpy(correction.a.values()) @ torch.from_numpy(correction.b.values())
        else:
            values = torch.from_numpy(t.values.astype(np.float32))
        state[name] = values.reshape(t.shape)
    return state


def _check_prefix(prefix: bytes, size: int, origin: str) -> tuple[int, int, int, bytes]:
    """Check magic, version and lengths against the file size; return (version, H, P, sha256)."""
    if prefix[:len(MAGIC)] != MAGIC[:len(prefix)]:
        raise UserError(f"{origin} is not a golfctl quantized artifact (wrong magic bytes); "
                        "pass the artifact.bin written by golfctl quantize")
    if size < PREFIX_BYTES:
        raise UserError(f"{origin} is truncated: {size} bytes, shorter than the {PREFIX_BYTES}-byte prefix; {_REMAKE}")
    _, version, header_len, payload_len, digest = _PREFIX.unpack(prefix)
    if version not in READABLE_VERSIONS:
        raise UserError(f"{origin} has quantized-artifact format version {version}; this golfctl reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}; {_REMAKE} or upgrade golfctl")
    expected = PREFIX_BYTES + header_len + payload_len
    if size != expected:
        state = "truncated" if size < expected else "corrupt (longer than its prefix says)"
        raise UserError(f"{origin} is {state}: the prefix says {expected} bytes (header {header_len}, "
                        f"payload {payload_len}) but it has {size}; {_REMAKE}")
    return version, header_len, payload_len, digest


def _load_header(compressed, origin: str) -> dict:
    try:
        text = zstd_decompress_exact(compressed, MAX_HEADER_BYTES).decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # zstd, UTF-8 and JSON errors are ValueErrors
        raise UserError(f"{origin} has an unreadable header ({exc}); {_REMAKE}") from None
    if not isinstance(header, dict):
        raise UserError(f"{origin} has an invalid header (not a JSON object); {_REMAKE}")
    return header


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _check_header(header: dict, version: int, payload_len: int, origin: str) -> list[_Placed | _PlacedCorrection]:
    """Validate the header's schema, codecs and regions; return the entries in payload order."""

    def bad(what: str) -> UserError:
        return UserError(f"{origin} has an invalid header: {what}; {_REMAKE}")

    if header.get("format") != FORMAT:
        raise UserError(f"{origin} is not a golfctl quantized artifact (format {header.get('format')!r})")
    if header.get("version") != version:
        raise UserError(f"{origin} has header version {header.get('version')!r} in a version {version} file; {_REMAKE}")
    if set(header) != _TOP_KEYS:
        raise bad(f"keys {sorted(header)} instead of {sorted(_TOP_KEYS)}")
    codec = header["codec"]
    known = CODECS if version == 1 else CODEC_CHOICES
    if not isinstance(codec, str) or codec not in known:
        raise UserError(f"{origin} uses codec {codec!r}, which this golfctl does not know "
                        f"(known: {', '.join(known)}); {_REMAKE} or upgrade golfctl")
    for key in ("config", "source", "meta"):
        if not isinstance(header[key], dict):
            raise bad(f"{key} is not an object")
    entries = header["tensors"]
    if not isinstance(entries, list):
        raise bad("tensors is not a list")
    names = set()
    int_shapes: dict[str, tuple[int, int]] = {}  # int tensors not yet corrected → (rows, cols)
    total = 0
    placed = []
    cursor = 0  # versions 2 and 3: regions are back to back
    for i, entry in enumerate(entries):
        where = f"tensors[{i}]"
        if not isinstance(entry, dict) or entry.get("kind") not in _ENTRY_KEYS[version]:
            raise bad(f"{where} is not an object with kind {' or '.join(map(repr, _ENTRY_KEYS[version]))}")
        kind = entry["kind"]
        keys = _ENTRY_KEYS[version][kind]
        if set(entry) != keys:
            raise bad(f"{where} has keys {sorted(entry)} instead of {sorted(keys)}")
        if kind == "lqer":
            correction, cursor, total = _place_correction(entry, int_shapes, cursor, total, payload_len, bad)
            placed.append(correction)
            continue
        name = entry["name"]
        if not isinstance(name, str) or name in names:
            raise bad(f"{where}.name {name!r} is not a unique string")
        names.add(name)
        where = f"tensor {name!r}"
        shape = entry["shape"]
        min_ndim = 1 if kind == "int" else 0
        if (not isinstance(shape, list) or not min_ndim <= len(shape) <= MAX_NDIM
                or not all(is_int(d) and d > 0 for d in shape)):
            raise bad(f"{where} shape {shape!r} is not a list of {min_ndim}..{MAX_NDIM} positive ints")
        numel = 1
        for d in shape:  # stop early: a hostile shape must not build a huge Python int
            numel *= d
            if numel > MAX_ELEMENTS:
                break
        total += numel
        if total > MAX_ELEMENTS:
            raise bad(f"{where} brings the element count past the limit of {MAX_ELEMENTS}")
        if kind == "int" and (not is_int(entry["bits"]) or not 2 <= entry["bits"] <= 8):
            raise bad(f"{where} bits {entry['bits']!r} is not an int in 2..8")
        if kind == "int":
            int_shapes[name] = matrix_shape(shape)
        if version == 1:
            placed.append(_place_v1(entry, kind, header["codec"], numel, payload_len, where, bad))
            continue
        entry_placed, cursor = _place_parts(entry, _V2_PARTS[kind], cursor, payload_len, where, bad)
        placed.append(entry_placed)
    if version == 1:
        _check_no_overlap(placed, bad)
    elif cursor != payload_len:
        raise bad(f"the tensors' regions hold {cursor} bytes of the {payload_len}-byte payload")
    return placed


# version 2 regions per kind: (length key, codec key, coding key, codec registry), in payload order;
# the keys are those of the entry and of _Placed alike. An "lqer" factor has an int tensor's regions.
_V2_PARTS = {"int": (("data", "codec", "coding", CODECS), ("scales", "scale_codec", "scale_coding", HALF_CODECS)),
             "fp16": (("data", "codec", "coding", HALF_CODECS),)}


def _place_parts(entry: dict, parts, cursor: int, payload_len: int, where: str, bad) -> tuple[_Placed, int]:
    """Check an entry's (or factor's) codecs and region lengths; its regions start at `cursor`."""
    fields = {}
    for part, codec_key, coding_key, registry in parts:
        codec_name = entry[codec_key]
        if not isinstance(codec_name, str) or codec_name not in registry:
            raise bad(f"{where} {codec_key} {codec_name!r} is not one of {', '.join(registry)}")
        if not isinstance(entry[coding_key], dict):
            raise bad(f"{where} {coding_key} is not an object")
        length = entry[part]
        if not is_int(length) or length < 0 or cursor + length > payload_len:
            raise bad(f"{where} {part} length {length!r} runs past the {payload_len}-byte payload")
        fields.update({part: (cursor, length), codec_key: codec_name, coding_key: entry[coding_key]})
        cursor += length
    return _Placed(entry=entry, **fields), cursor


def _place_correction(entry: dict, int_shapes: dict[str, tuple[int, int]], cursor: int, total: int,
                      payload_len: int, bad) -> tuple[_PlacedCorrection, int, int]:
    """Check an "lqer" entry against the int tensor it corrects (listed earlier, corrected once);
    returns it placed, the new cursor and the new element count."""
    name = entry["name"]
    if not isinstance(name, str) or name not in int_shapes:
        raise bad(f"correction {name!r} does not follow an int tensor of that name not yet corrected")
    where = f"the correction of tensor {name!r}"
    rows, cols = int_shapes.pop(name)
    rank = entry["rank"]
    if not is_int(rank) or not 1 <= rank <= min(rows, cols):
        raise bad(f"{where} rank {rank!r} is not an int in 1..{min(rows, cols)}")
    factors = []
    for key, numel in (("a", rows * rank), ("b", rank * cols)):
        f = entry[key]
        here = f"{where} factor {key}"
        if not isinstance(f, dict) or set(f) != _FACTOR_KEYS:
            raise bad(f"{here} is not an object with the keys {sorted(_FACTOR_KEYS)}")
        if not is_int(f["bits"]) or not 2 <= f["bits"] <= 8:
            raise bad(f"{here} bits {f['bits']!r} is not an int in 2..8")
        if not isinstance(f["symmetric"], bool):
            raise bad(f"{here} symmetric {f['symmetric']!r} is not a bool")
        if not is_int(f["group"]) or f["group"] < 1 or numel % f["group"]:
            raise bad(f"{here} group {f['group']!r} is not a positive int dividing its {numel} values")
        total += numel
        if total > MAX_ELEMENTS:
            raise bad(f"{here} brings the element count past the limit of {MAX_ELEMENTS}")
        placed, cursor = _place_parts(f, _V2_PARTS["int"], cursor, payload_len, here, bad)
        factors.append(placed)
    return _PlacedCorrection(entry, (rows, cols), *factors), cursor, total


def _place_v1(entry: dict, kind: str, codec: str, numel: int, payload_len: int, where: str, bad) -> _Placed:
    data = _check_region(entry["data"], payload_len, f"{where} data", bad)
    if kind == "fp16":
        if data[1] != numel * 2:
            raise bad(f"{where} data is {data[1]} bytes, expected {numel * 2} for {numel} float16")
        return _Placed(entry, "raw", {}, data)
    if not isinstance(entry["coding"], dict):
        raise bad(f"{where} coding is not an object")
    scales = _check_region(entry["scales"], payload_len, f"{where} scales", bad)
    if scales[1] != entry["shape"][0] * 2:
        raise bad(f"{where} scales are {scales[1]} bytes, expected {entry['shape'][0] * 2} for {entry['shape'][0]} rows")
    return _Placed(entry, codec, entry["coding"], data, "raw", {}, scales)


def _check_region(region, payload_len: int, label: str, bad) -> tuple[int, int]:
    if not isinstance(region, dict) or set(region) != {"offset", "length"}:
        raise bad(f"{label} is not an object with offset and length")
    offset, length = region["offset"], region["length"]
    if not (is_int(offset) and is_int(length) and offset >= 0 and length >= 0):
        raise bad(f"{label} offset and length must be non-negative ints")
    if offset + length > payload_len:
        raise bad(f"{label} ends at byte {offset + length}, past the {payload_len}-byte payload")
    return offset, length


def _check_no_overlap(placed: list[_Placed], bad) -> None:
    regions = sorted((*region, f"tensor {p.entry['name']!r} {part}")
                     for p in placed for part, region in (("data", p.data), ("scales", p.scales)) if region[1])
    end, previous = 0, None
    for offset, length, label in regions:
        if offset < end:
            raise bad(f"{label} overlaps {previous}")
        end, previous = offset + length, label


def _slice(payload, region: tuple[int, int]):
    offset, length = region
    return payload[offset:offset + length]

