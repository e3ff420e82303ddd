"""Token shards in the challenge's binary format, with a validating reader and a streaming writer.

Byte layout of one shard (all little-endian):

    offset 0      256 × int32 header: [MAGIC=20240520, VERSION=1, n_tokens, 0, …, 0]
    offset 1024   n_tokens × uint16 token ids

Every document starts with BOS (id 1). Shards of a split are named
`fineweb_{split}_{index:06d}.bin`; their concatenation in index order is the split's stream.

A *byte sidecar* (CaseOps datasets, golfctl/caseops.py) has the same layout and naming, stream
`{split}_bytes` (`fineweb_val_bytes_000000.bin`, as the 2026-04-27 record's data names it), with
one uint16 per token of the split's stream in place of the ids: the UTF-8 bytes of the original,
untransformed text that token stands for (0 for BOS and for case operators). The dataset manifest
records it as format SIDECAR_FORMAT, version SIDECAR_VERSION.

Loading checks what the caller knows about a shard in the same pass that reads it: the sha256
its manifest records (header and tokens, hashed block by block as they are read) and the
vocabulary its ids must lie in (one max() per block). A mismatch is a UserError naming the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

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
SIDECAR_FORMAT = "golfctl.token_bytes"
SIDECAR_VERSION = 1
MAX_TOKEN_BYTES = (1 << 16) - 1  # a sidecar entry is uint16
_REMAKE = "re-create it with `golfctl tokenize` or download it again"
BLOCK_TOKENS = 1 << 22  # tokens hashed and range-checked per step (8 MiB): each block is checked while in cache
_MAX_THREADS = 8  # shards checked at once (hashlib, numpy and file reads release the GIL)
T = TypeVar("T")


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def sidecar_stream(split: str) -> str:
    """The shard stream holding `split`'s byte sidecar: shard_name(sidecar_stream("val"), 0) is
    fineweb_val_bytes_000000.bin."""
    return f"{split}_bytes"


def shard_paths(folder: Path, stream: str) -> list[Path]:
    """`folder`'s shards of one stream in index order: fineweb_{stream}_NNNNNN.bin exactly, so that the val
    stream does not take in the val_bytes sidecar beside it."""
    pattern = re.compile(rf"fineweb_{re.escape(stream)}_\d+\.bin")
    return sorted(p for p in Path(folder).glob(f"fineweb_{stream}_*.bin") if pattern.fullmatch(p.name))


def _header(n_tokens: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, n_tokens)
    return header.tobytes()


def read_shard_header(path: str | os.PathLike) -> int:
    """Validate a shard's header against its file size; return its token count."""
    return _read_header(Path(path))[0]


def _read_header(path: Path) -> tuple[int, bytes]:
    """(token count, the header's 1,024 bytes) of a shard whose header matches its file size."""
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
    return n_tokens, raw


def load_shard(path: str | os.PathLike, sha256: str | None = None, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a validated shard's tokens (read-only uint16 array).

    With `sha256` (the manifest's) and/or `vocab_size`, the mapping is read through once, block by
    block, before it is returned: its file must hash to `sha256` and every id must be below
    `vocab_size` (`ShardCheck`). The pages read stay in the page cache for the caller."""
    path = Path(path)
    n_tokens, header = _read_header(path)
    if n_tokens == 0:
        tokens = np.zeros(0, dtype=TOKEN_DTYPE)
    else:
        tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    if sha256 is not None or vocab_size is not None:
        check = ShardCheck(path, header, sha256, vocab_size)
        for start in range(0, n_tokens, BLOCK_TOKENS):
            check.block(start, tokens[start:start + BLOCK_TOKENS])
        check.finish()
    return tokens


def read_shard(path: str | os.PathLike, out: np.ndarray | None = None, sha256: str | None = None,
               vocab_size: int | None = None) -> np.ndarray:
    """A validated shard's tokens read into memory: into `out` (a writable uint16 array of exactly its
    token count) when given. With `sha256` and/or `vocab_size`, each block is hashed and range-checked
    right after it is read (`ShardCheck`): one pass over the file."""
    path = Path(path)
    n_tokens, _ = _read_header(path)
    if out is None:
        out = np.empty(n_tokens, dtype=TOKEN_DTYPE)
    if out.shape != (n_tokens,) or out.dtype != TOKEN_DTYPE:
        raise UserError(f"shard {path} holds {n_tokens:,} tokens, not the {out.size:,} it held when its dataset was "
                        "opened: it changed meanwhile; rerun once the dataset is complete")
    checking = sha256 is not None or vocab_size is not None
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
        check = ShardCheck(path, header, sha256, vocab_size) if checking else None
        raw = out.view(np.uint8)
        for start in range(0, n_tokens, BLOCK_TOKENS):
            end = min(start + BLOCK_TOKENS, n_tokens)
            view = memoryview(raw[2 * start:2 * end])
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise UserError(f"shard {path} became shorter while it was read; {_REMAKE}")
                got += n
            if check is not None:
                check.block(start, out[start:end])
    if check is not None:
        check.finish()
    return out


class ShardCheck:
    """What a shard must satisfy, fed block by block in order: the sha256 of the whole file (header
    included, as the manifest records it) and ids below `vocab_size`. `finish` raises the UserError."""

    def __init__(self, path: Path, header: bytes, sha256: str | None, vocab_size: int | None):
        self.path, self.sha256, self.vocab_size = path, sha256, vocab_size
        self.digest = hashlib.sha256(header) if sha256 is not None else None
        self.bad: tuple[int, int] | None = None  # (position, id) of the first id outside the vocabulary

    def block(self, start: int, tokens: np.ndarray) -> None:
        if self.digest is not None:
            self.digest.update(tokens)
        if self.vocab_size is not None and self.bad is None and tokens.size and int(tokens.max()) >= self.vocab_size:
            at = int(np.argmax(tokens >= self.vocab_size))
            self.bad = (start + at, int(tokens[at]))

    def finish(self) -> None:
        if self.digest is not None and self.digest.hexdigest() != self.sha256:
            raise UserError(f"shard {self.path} is corrupt: its sha256 differs from the one the dataset's "
                            f"manifest.json records; re-create the dataset with `golfctl tokenize` "
                            f"(`golfctl inspect {self.path.parent}` lists every damaged file)")
        if self.bad is not None:
            position, token = self.bad
            raise UserError(f"shard {self.path} holds token id {token} at position {position:,}, outside the "
                            f"vocabulary of {self.vocab_size} ids; it was made with another tokenizer: re-create "
                            "the dataset with `golfctl tokenize` using the model's tokenizer, or point --data at "
                            "the dataset the model was trained on")


def map_shards(load: Callable[[int], T], count: int) -> list[T]:
    """[load(0), …, load(count - 1)], shards checked on up to 8 threads; the first shard's error in
    index order is the one raised."""
    workers = min(count, _MAX_THREADS, os.cpu_count() or 1)
    if workers <= 1:
        return [load(i) for i in range(count)]
    with ThreadPoolExecutor(workers, thread_name_prefix="shards") as pool:
        return list(pool.map(load, range(count)))


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
