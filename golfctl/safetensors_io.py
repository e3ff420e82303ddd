"""Deterministic safetensors serialization.

The safetensors library writes its metadata from a hash map, so two runs can order the
header differently and the same weights get different bytes (and sha256). Golden tests and
provenance need identical files, so golfctl writes the (simple) format itself: an 8-byte
little-endian header length, a JSON header with sorted keys padded with spaces to a multiple
of 8, then each tensor's raw little-endian bytes in name order. The safetensors library
reads these files as usual.

With `checksum`, the metadata also records `payload_sha256`: the sha256 of everything after the
header (the tensors' bytes). `digest_file` recomputes it in the same streamed pass that hashes the
whole file, so a reader can refuse a flipped bit in the weights; files without the field (older
golfctl) have nothing to compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


PAYLOAD_SHA256 = "payload_sha256"  # the metadata key
_BLOCK = 1 << 23


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str], checksum: bool = False) -> bytes:
    """The file's bytes; with `checksum`, metadata[PAYLOAD_SHA256] is the sha256 of the tensor payload."""
    header: dict = {}
    blobs = []
    offset = 0
    payload = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no safetensors code")
        blob = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        payload.update(blob)
        offset += len(blob)
    if checksum:
        metadata = {**metadata, PAYLOAD_SHA256: payload.hexdigest()}
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


@dataclass(frozen=True)
class FileDigest:
    file_sha256: str | None  # of the whole file (None: not asked for)
    payload_sha256: str | None  # of the bytes after the header, what PAYLOAD_SHA256 records (None: not asked for)


def digest_file(path: str | os.PathLike, whole: bool = True, payload: bool = True) -> FileDigest:
    """The sha256 of a safetensors file (already opened successfully, so its header length is sane) and/or
    of its tensor bytes, in one streamed read. Both: the digests run side by side on two threads
    (hashlib releases the GIL), so the second costs no time on a machine with 2 cores."""
    file_digest = hashlib.sha256() if whole else None
    payload_digest = hashlib.sha256() if payload else None
    if file_digest is None and payload_digest is None:
        return FileDigest(None, None)
    with open(path, "rb") as f, ThreadPoolExecutor(1, thread_name_prefix="digest") as pool:
        prefix = f.read(8)
        (header_len,) = struct.unpack("<Q", prefix)
        header = f.read(header_len)
        if file_digest is not None:
            file_digest.update(prefix + header)
        while block := f.read(_BLOCK):
            if file_digest is not None and payload_digest is not None:
                side = pool.submit(payload_digest.update, block)
                file_digest.update(block)
                side.result()
            else:
                (file_digest or payload_digest).update(block)
    return FileDigest(file_digest.hexdigest() if file_digest is not None else None,
                      payload_digest.hexdigest() if payload_digest is not None else None)
