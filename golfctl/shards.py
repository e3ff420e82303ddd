"""Token shards in the challenge's binary format, with a validating reader and a streaming writer.

Byte layout of one shard (all little-endian):

    offset 0      256 × int32 header: [MAGIC=20240520, VERSION=1, n_tokens, 0, …, 0]
    offset 1024   n_tokens × uint16 token ids

Every document starts with BOS (id 1). Shards of a split are named
`fineweb_{split}_{index:06d}.bin`; their concatenation in index order is the split's stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golfctl.errors import UserError
from golfctl.fileio import sha256_file

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16  # uint16 token ids
MAX_SHARD_TOKENS = (1 << 31) - 1  # the header stores the count as int32
BOS_ID = 1
SPLITS = ("train", "val")
_REMAKE = "re-create it with `golfctl tokenize` or download it again"


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def _header(n_tokens: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, n_tokens)
    return header.tobytes()


def read_shard_header(path: str | os.PathLike) -> int:
    """Validate a shard's header against its file size; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise UserError(f"shard {path} does not exist; {_REMAKE}") from None
    except IsADirectoryError:
        raise UserError(f"shard {path} is a folder, not a shard file") from None
    if len(raw) < HEADER_BYTES:
        raise UserError(
            f"shard {path} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header; {_REMAKE}"
        )
    magic, version, n_tokens = (int(v) for v in np.frombuffer(raw, dtype="<i4", count=3))
    if magic != MAGIC:
        raise UserError(
            f"{path} is not a token shard: magic {magic} instead of {MAGIC}; "
            "point at a dataset folder made by `golfctl tokenize` or the challenge's download script"
        )
    if version != VERSION:
        raise UserError(f"shard {path} has format version {version}; this golfctl reads version {VERSION} only")
    expected = HEADER_BYTES + n_tokens * TOKEN_DTYPE.itemsize
    if n_tokens < 0 or size != expected:
        state = "truncated" if size < expected else "corrupt (longer than its header says)"
        raise UserError(
            f"shard {path} is {state}: header says {n_tokens} tokens ({expected} bytes) "
            f"but the file has {size} bytes; {_REMAKE}"
        )
    return n_tokens


def load_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a validated shard's tokens (read-only uint16 array)."""
    n_tokens = read_shard_header(path)
    if n_tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


@dataclass(frozen=True)
class ShardRecord:
    file: str
    tokens: int
    sha256: str


class ShardWriter:
    """Streams one split's tokens into consecutive shards of at most `shard_tokens` tokens.

    Memory stays bounded by the arrays passed to `append`: tokens go straight to disk and
    each header is patched with its count when the shard closes.
    """

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        if not 1 <= shard_tokens <= MAX_SHARD_TOKENS:
            raise UserError(f"--shard-tokens must be between 1 and {MAX_SHARD_TOKENS}, got {shard_tokens}")
        self.folder = Path(folder)
        self.split = split
        self.shard_tokens = shard_tokens
        self.records: list[ShardRecord] = []
        self._file = None
        self._filled = 0

    def append(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
        while tokens.size:
            if self._file is None:
                self._open_next()
            take = min(tokens.size, self.shard_tokens - self._filled)
            self._file.write(tokens[:take].tobytes())
            self._filled += take
            tokens = tokens[take:]
            if self._filled == self.shard_tokens:
                self._close_current()

    def close(self) -> list[ShardRecord]:
        if self._file is not None:
            self._close_current()
        return self.records

    def _open_next(self) -> None:
        path = self.folder / shard_name(self.split, len(self.records))
        self._file = open(path, "wb")
        self._file.write(_header(0))
        self._filled = 0

    def _close_current(self) -> None:
        f, self._file = self._file, None
        f.seek(0)
        f.write(_header(self._filled))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        path = Path(f.name)
        self.records.append(ShardRecord(path.name, self._filled, sha256_file(path)))
