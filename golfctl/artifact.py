"""The quantized artifact (`artifact.bin`): entropy-coded integer weights, scales and fp16 tensors.

No pickle: reading an artifact never executes code, and the reader checks every length, offset
and shape before it allocates. Byte layout (all integers little-endian):

    offset 0    8 bytes   magic b"GOLFQ\\x00\\x01\\x00"
    offset 8    u32       format version (1)
    offset 12   u32       H = length of the compressed header
    offset 16   u64       P = length of the payload
    offset 24   32 bytes  sha256 over (compressed header bytes + payload bytes)
    offset 56   H bytes   header: UTF-8 JSON (sorted keys), zstd level 19
    offset 56+H P bytes   payload: the tensors' regions, addressed by the header

The file is exactly 56 + H + P bytes. The header JSON is

    {"format": "golfctl.quantized", "version": 1, "codec": "ans" | "zstd",
     "config": {…}, "source": {…}, "meta": {…},     # opaque dicts (model config, input sha256, …)
     "tensors": [entry, …]}                          # payload order

and each tensor entry is one of

    {"name", "shape": [d0, …], "kind": "int", "bits": 2..8,
     "data": {"offset", "length"},     # the codec's bytes for the rows·cols integers (row-major)
     "coding": {…},                    # the codec's params (symbol table)
     "scales": {"offset", "length"}}   # rows float16 per-row scales, length = rows·2
    {"name", "shape": [d0, …], "kind": "fp16",
     "data": {"offset", "length"}}     # numel float16 values (row-major), length = numel·2

An int tensor of shape (d0, d1, …) is a (rows, cols) = (d0, d1·…) matrix of integers in
[-qmax, qmax], qmax = 2**(bits-1) - 1; its value is q · scale of its row. Offsets are relative
to the payload start; regions lie inside the payload and do not overlap.
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

from golfctl.codec import CODECS, zstd_decompress_exact
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes

MAGIC = b"GOLFQ\x00\x01\x00"
VERSION = 1
FORMAT = "golfctl.quantized"
_PREFIX = struct.Struct("<8sIIQ32s")  # magic, version, header length, payload length, sha256
PREFIX_BYTES = _PREFIX.size  # 56
HEADER_LEVEL = 19
MAX_HEADER_BYTES = 16 << 20  # decompressed header JSON
MAX_ELEMENTS = 1 << 28  # all tensors together: bounds what decoding may allocate
MAX_NDIM = 8
_FP16 = np.dtype("<f2")
_REMAKE = "re-run golfctl quantize"
_TOP_KEYS = {"format", "version", "codec", "config", "source", "meta", "tensors"}
_ENTRY_KEYS = {"int": {"name", "shape", "kind", "bits", "data", "coding", "scales"},
               "fp16": {"name", "shape", "kind", "data"}}


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
class Artifact:
    codec: str
    config: dict
    source: dict
    meta: dict
    tensors: dict[str, QuantizedTensor | Float16Tensor] = field(default_factory=dict)
    header_bytes: int = 0  # compressed header size
    payload_bytes: int = 0
    stored_bytes: dict[str, int] = field(default_factory=dict)  # per tensor: its payload regions' bytes


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def matrix_shape(shape: tuple) -> tuple[int, int]:
    """(rows, cols) of an int tensor: the first dimension by the product of the rest."""
    rows = shape[0]
    return rows, math.prod(shape) // rows


# --- writing -------------------------------------------------------------------------------


def encode_artifact(tensors: list, codec: str, config: dict, source: dict, meta: dict) -> bytes:
    """Serialize tensors (QuantizedTensor | Float16Tensor, in payload order) to artifact bytes.

    Deterministic: the same inputs give the same bytes.
    """
    if codec not in CODECS:
        raise UserError(f"unknown codec {codec!r}; choose one of: {', '.join(CODECS)}")
    for label, value in (("config", config), ("source", source), ("meta", meta)):
        if not isinstance(value, dict):
            raise TypeError(f"{label} must be a dict, got {type(value).__name__}")
    payload = bytearray()
    entries = []
    names = set()

    def region(raw: bytes) -> dict:
        entry = {"offset": len(payload), "length": len(raw)}
        payload.extend(raw)
        return entry

    for t in tensors:
        if not isinstance(t.name, str) or t.name in names:
            raise ValueError(f"tensor names must be unique strings, got {t.name!r}")
        names.add(t.name)
        shape = tuple(t.shape)
        if not all(isinstance(d, int) and d > 0 for d in shape) or len(shape) > MAX_NDIM:
            raise ValueError(f"{t.name}: shape {shape} must be at most {MAX_NDIM} positive ints")
        if isinstance(t, QuantizedTensor):
            entries.append(_encode_int(t, shape, codec, region))
        elif isinstance(t, Float16Tensor):
            values = np.asarray(t.values)
            numel = math.prod(shape)
            if values.dtype != np.float16 or values.size != numel:
                raise ValueError(f"{t.name}: values must be {numel} float16, got {values.size} {values.dtype}")
            entries.append({"name": t.name, "shape": list(shape), "kind": "fp16",
                            "data": region(np.ascontiguousarray(values, dtype=_FP16).tobytes())})
        else:
            raise TypeError(f"expected QuantizedTensor or Float16Tensor, got {type(t).__name__}")
    header = {"format": FORMAT, "version": VERSION, "codec": codec, "config": config, "source": source,
              "meta": meta, "tensors": entries}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    compressed = zstandard.ZstdCompressor(level=HEADER_LEVEL, write_content_size=True).compress(text.encode("utf-8"))
    return _sign(compressed, bytes(payload))


def _encode_int(t: QuantizedTensor, shape: tuple, codec: str, region) -> dict:
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
    data, coding = CODECS[codec].encode(q)
    return {"name": t.name, "shape": list(shape), "kind": "int", "bits": t.bits, "data": region(data),
            "coding": coding, "scales": region(np.ascontiguousarray(scales, dtype=_FP16).tobytes())}


def _sign(header: bytes, payload: bytes) -> bytes:
    digest = hashlib.sha256(header + payload).digest()
    return _PREFIX.pack(MAGIC, VERSION, len(header), len(payload), digest) + header + payload


def write_artifact(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_bytes(path, data)


# --- reading -------------------------------------------------------------------------------


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
    header_len, payload_len, digest = _check_prefix(data[:PREFIX_BYTES], len(data), origin)
    body = memoryview(data)[PREFIX_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise UserError(f"{origin} is truncated or corrupt (checksum mismatch); {_REMAKE}")
    compressed = body[:header_len]
    payload = body[header_len:]
    header = _load_header(compressed, origin)
    entries = _check_header(header, payload_len, origin)
    codec = CODECS[header["codec"]]
    tensors = {}
    stored = {e["name"]: e["data"]["length"] + e.get("scales", {}).get("length", 0) for e in entries}
    for entry in entries:
        name, shape = entry["name"], tuple(entry["shape"])
        numel = math.prod(shape)
        data_region = _slice(payload, entry["data"])
        if entry["kind"] == "fp16":
            values = np.frombuffer(data_region, dtype=_FP16).astype(np.float16).reshape(shape)
            tensors[name] = Float16Tensor(name, shape, values)
            continue
        rows, cols = matrix_shape(shape)
        try:
            q = codec.decode(data_region, entry["coding"], numel)
        except ValueError as exc:
            raise UserError(f"{origin}: tensor {name!r} cannot be decoded ({exc}); {_REMAKE}") from None
        limit = qmax(entry["bits"])
        if not -limit <= int(q.min()) <= int(q.max()) <= limit:
            raise UserError(f"{origin}: tensor {name!r} has values beyond ±{limit} "
                            f"for {entry['bits']} bits; {_REMAKE}")
        scales = np.frombuffer(_slice(payload, entry["scales"]), dtype=_FP16).astype(np.float16)
        if not np.isfinite(scales).all():
            raise UserError(f"{origin}: tensor {name!r} has non-finite scales; {_REMAKE}")
        tensors[name] = QuantizedTensor(name, shape, entry["bits"], q.reshape(rows, cols), scales)
    return Artifact(codec=header["codec"], config=header["config"], source=header["source"], meta=header["meta"],
                    tensors=tensors, header_bytes=header_len, payload_bytes=payload_len, stored_bytes=stored)


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


def _check_prefix(prefix: bytes, size: int, origin: str) -> tuple[int, int, bytes]:
    """Check magic, version and lengths against the file size; return (H, P, sha256)."""
    if prefix[:len(MAGIC)] != MAGIC[:len(prefix)]:
        raise UserError(f"{origin} is not a golfctl quantized artifact (wrong magic bytes); "
                        "pass the artifact.bin written by golfctl quantize")
    if size < PREFIX_BYTES:
        raise UserError(f"{origin} is truncated: {size} bytes, shorter than the {PREFIX_BYTES}-byte prefix; {_REMAKE}")
    _, version, header_len, payload_len, digest = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise UserError(f"{origin} has quantized-artifact format version {version}; "
                        f"this golfctl reads version {VERSION} only")
    expected = PREFIX_BYTES + header_len + payload_len
    if size != expected:
        state = "truncated" if size < expected else "corrupt (longer than its prefix says)"
        raise UserError(f"{origin} is {state}: the prefix says {expected} bytes (header {header_len}, "
                        f"payload {payload_len}) but it has {size}; {_REMAKE}")
    return header_len, payload_len, digest


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


def _check_header(header: dict, payload_len: int, origin: str) -> list[dict]:
    """Validate the header's schema and regions; return the tensor entries."""

    def bad(what: str) -> UserError:
        return UserError(f"{origin} has an invalid header: {what}; {_REMAKE}")

    if header.get("format") != FORMAT:
        raise UserError(f"{origin} is not a golfctl quantized artifact (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise UserError(f"{origin} has header version {header.get('version')!r}; this golfctl reads {VERSION} only")
    if set(header) != _TOP_KEYS:
        raise bad(f"keys {sorted(header)} instead of {sorted(_TOP_KEYS)}")
    codec = header["codec"]
    if not isinstance(codec, str) or codec not in CODECS:
        raise UserError(f"{origin} uses codec {codec!r}, which this golfctl does not know "
                        f"(known: {', '.join(CODECS)}); {_REMAKE} or upgrade golfctl")
    for key in ("config", "source", "meta"):
        if not isinstance(header[key], dict):
            raise bad(f"{key} is not an object")
    entries = header["tensors"]
    if not isinstance(entries, list):
        raise bad("tensors is not a list")
    names = set()
    regions = []  # (offset, length, label)
    total = 0
    for i, entry in enumerate(entries):
        where = f"tensors[{i}]"
        if not isinstance(entry, dict) or entry.get("kind") not in _ENTRY_KEYS:
            raise bad(f"{where} is not an object with kind 'int' or 'fp16'")
        kind = entry["kind"]
        if set(entry) != _ENTRY_KEYS[kind]:
            raise bad(f"{where} has keys {sorted(entry)} instead of {sorted(_ENTRY_KEYS[kind])}")
        name = entry["name"]
        if not isinstance(name, str) or name in names:
            raise bad(f"{where}.name {name!r} is not a unique string")
        names.add(name)
        where = f"tensor {name!r}"
        shape = entry["shape"]
        min_ndim = 1 if kind == "int" else 0
        if (not isinstance(shape, list) or not min_ndim <= len(shape) <= MAX_NDIM
                or not all(_is_int(d) and d > 0 for d in shape)):
            raise bad(f"{where} shape {shape!r} is not a list of {min_ndim}..{MAX_NDIM} positive ints")
        numel = 1
        for d in shape:  # stop early: a hostile shape must not build a huge Python int
            numel *= d
            if numel > MAX_ELEMENTS:
                break
        total += numel
        if total > MAX_ELEMENTS:
            raise bad(f"{where} brings the element count past the limit of {MAX_ELEMENTS}")
        regions.append(_check_region(entry["data"], payload_len, f"{where} data", bad))
        if kind == "fp16":
            if regions[-1][1] != numel * 2:
                raise bad(f"{where} data is {regions[-1][1]} bytes, expected {numel * 2} for {numel} float16")
            continue
        bits = entry["bits"]
        if not _is_int(bits) or not 2 <= bits <= 8:
            raise bad(f"{where} bits {bits!r} is not an int in 2..8")
        if not isinstance(entry["coding"], dict):
            raise bad(f"{where} coding is not an object")
        regions.append(_check_region(entry["scales"], payload_len, f"{where} scales", bad))
        if regions[-1][1] != shape[0] * 2:
            raise bad(f"{where} scales are {regions[-1][1]} bytes, expected {shape[0] * 2} for {shape[0]} rows")
    regions.sort()
    end, previous = 0, None
    for offset, length, label in regions:
        if length and offset < end:
            raise bad(f"{label} overlaps {previous}")
        if length:
            end, previous = offset + length, label
    return entries


def _check_region(region, payload_len: int, label: str, bad) -> tuple[int, int, str]:
    if not isinstance(region, dict) or set(region) != {"offset", "length"}:
        raise bad(f"{label} is not an object with offset and length")
    offset, length = region["offset"], region["length"]
    if not (_is_int(offset) and _is_int(length) and offset >= 0 and length >= 0):
        raise bad(f"{label} offset and length must be non-negative ints")
    if offset + length > payload_len:
        raise bad(f"{label} ends at byte {offset + length}, past the {payload_len}-byte payload")
    return offset, length, label


def _slice(payload, region: dict):
    return payload[region["offset"]:region["offset"] + region["length"]]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
