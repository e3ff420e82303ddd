"""The quantized artifact (`artifact.bin`): entropy-coded integer weights, scales and fp16 tensors.

No pickle: reading an artifact never executes code, and the reader checks every length and shape
before it allocates. Byte layout (all integers little-endian):

    offset 0    8 bytes   magic b"GOLFQ\\x00\\x01\\x00"
    offset 8    u32       format version (2; version 1 is still read)
    offset 12   u32       H = length of the compressed header
    offset 16   u64       P = length of the payload
    offset 24   32 bytes  sha256 over (compressed header bytes + payload bytes)
    offset 56   H bytes   header: UTF-8 JSON (sorted keys), zstd level 19
    offset 56+H P bytes   payload: the tensors' regions, back to back in header order

The file is exactly 56 + H + P bytes. The version 2 header JSON is

    {"format": "golfctl.quantized", "version": 2,
     "codec": "auto" | an integer codec,           # the quantize setting that chose the codecs
     "config": {…}, "source": {…}, "meta": {…},     # opaque dicts (model config, input sha256, …)
     "tensors": [entry, …]}                          # payload order

and each tensor entry is one of

    {"name", "shape": [d0, …], "kind": "int", "bits": 2..8,
     "codec": "ans" | "rows" | "zstd", "coding": {…}, "data": length,          # the integers
     "scale_codec": "raw" | "split", "scale_coding": {…}, "scales": length}   # per-row float16 scales
    {"name", "shape": [d0, …], "kind": "fp16",
     "codec": "raw" | "split", "coding": {…}, "data": length}                  # the float16 values

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
VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    header_bytes: int = 0  # compressed header size
    payload_bytes: int = 0
    stored: dict[str, Stored] = field(default_factory=dict)
    version: int = VERSION


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def matrix_shape(shape: tuple) -> tuple[int, int]:
    """(rows, cols) of an int tensor: the first dimension by the product of the rest."""
    rows = shape[0]
    return rows, math.prod(shape) // rows


# --- writing -------------------------------------------------------------------------------


def encode_artifact(tensors: list, codec: str, config: dict, source: dict, meta: dict) -> bytes:
    """Serialize tensors (QuantizedTensor | Float16Tensor, in payload order) to artifact bytes.

    `codec` is `auto` (each int tensor takes the smallest of AUTO_CODECS) or one integer codec
    for all; float16 scales and values always take the smaller half codec. Deterministic: the same
    inputs give the same bytes.
    """
    if codec not in CODEC_CHOICES:
        raise UserError(f"unknown codec {codec!r}; choose one of: {', '.join(CODEC_CHOICES)}")
    for label, value in (("config", config), ("source", source), ("meta", meta)):
        if not isinstance(value, dict):
            raise TypeError(f"{label} must be a dict, got {type(value).__name__}")
    payload = bytearray()
    entries = []
    names = set()
    int_codecs = AUTO_CODECS if codec == AUTO else (codec,)
    for t in tensors:
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
        elif isinstance(t, Float16Tensor):
            values = np.asarray(t.values)
            numel = math.prod(shape)
            if values.dtype != np.float16 or values.size != numel:
                raise ValueError(f"{t.name}: values must be {numel} float16, got {values.size} {values.dtype}")
            entry.update(kind="fp16", **_smallest(HALF_CODECS, HALF_CODECS, values.ravel(), payload))
        else:
            raise TypeError(f"expected QuantizedTensor or Float16Tensor, got {type(t).__name__}")
        entries.append(entry)
    header = {"format": FORMAT, "version": VERSION, "codec": codec, "config": config, "source": source,
              "meta": meta, "tensors": entries}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    compressed = zstandard.ZstdCompressor(level=HEADER_LEVEL, write_content_size=True).compress(text.encode("utf-8"))
    return _sign(compressed, bytes(payload))


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


def _sign(header: bytes, payload: bytes) -> bytes:
    digest = hashlib.sha256(header + payload).digest()
    return _PREFIX.pack(MAGIC, VERSION, len(header), len(payload), digest) + header + payload


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
    tensors, stored = {}, {}
    for p in placed:
        name, shape = p.entry["name"], tuple(p.entry["shape"])
        try:
            tensors[name] = _decode_tensor(p, name, shape, payload)
        except ValueError as exc:
            raise UserError(f"{origin}: tensor {name!r} cannot be decoded ({exc}); {_REMAKE}") from None
        stored[name] = Stored(p.codec, p.data[1], p.scale_codec, p.scales[1])
    return Artifact(codec=header["codec"], config=header["config"], source=header["source"], meta=header["meta"],
                    tensors=tensors, header_bytes=header_len, payload_bytes=payload_len, stored=stored,
                    version=version)


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


def dequantized_state(artifact: Artifact) -> dict[str, torch.Tensor]:
    """float32 tensors by name: int tensors as q · (row scale), fp16 tensors widened."""
    state = {}
    for name, t in artifact.tensors.items():
        if isinstance(t, QuantizedTensor):
            values = t.q.astype(np.float32) * t.scales.astype(np.float32)[:, None]  # (rows, cols)
        else:
            values = t.values.astype(np.float32)
        state[name] = torch.from_numpy(values.reshape(t.shape))
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


def _check_header(header: dict, version: int, payload_len: int, origin: str) -> list[_Placed]:
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
    total = 0
    placed = []
    cursor = 0  # version 2: regions are back to back
    for i, entry in enumerate(entries):
        where = f"tensors[{i}]"
        if not isinstance(entry, dict) or entry.get("kind") not in _ENTRY_KEYS[version]:
            raise bad(f"{where} is not an object with kind 'int' or 'fp16'")
        kind = entry["kind"]
        keys = _ENTRY_KEYS[version][kind]
        if set(entry) != keys:
            raise bad(f"{where} has keys {sorted(entry)} instead of {sorted(keys)}")
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
        if version == 1:
            placed.append(_place_v1(entry, kind, header["codec"], numel, payload_len, where, bad))
            continue
        fields = {}
        for part, codec_key, coding_key, registry in _V2_PARTS[kind]:
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
        placed.append(_Placed(entry=entry, **fields))
    if version == 1:
        _check_no_overlap(placed, bad)
    elif cursor != payload_len:
        raise bad(f"the tensors' regions hold {cursor} bytes of the {payload_len}-byte payload")
    return placed


# version 2 regions per kind: (length key, codec key, coding key, codec registry), in payload order;
# the keys are those of the entry and of _Placed alike
_V2_PARTS = {"int": (("data", "codec", "coding", CODECS), ("scales", "scale_codec", "scale_coding", HALF_CODECS)),
             "fp16": (("data", "codec", "coding", HALF_CODECS),)}


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

