"""Atomic writes and checksums: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from golfctl.errors import UserError

_HASH_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    Any failure (a full disk, no permission, a missing folder) removes the temporary file,
    leaves an existing `path` as it was, and is raised as one UserError.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log; a failure is a UserError (earlier lines stay as they were)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as exc:
        raise write_error(Path(path), exc) from None


def write_error(path: Path, exc: OSError) -> UserError:
    """The UserError for a failed write: what failed, and that nothing was replaced."""
    state = "the old file is unchanged" if Path(path).exists() else "nothing was written"
    return UserError(f"cannot write {path} ({exc.strerror or exc}); {state}. Free space or choose another --out")


@contextlib.contextmanager
def staged_directory(final: Path, replace: bool) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it takes `final`'s name in one rename.

    If the body raises, the staging folder is deleted and `final` is untouched (an OSError
    becomes one UserError). With
    `replace`, an existing `final` is moved aside first and deleted only after the new
    folder is in place.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".staging"))
    except OSError as exc:
        raise write_error(final, exc) from None
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk or lost permission while filling it
            raise write_error(final, exc) from None
        raise
    old = None
    if final.exists():
        if not replace:
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(final)
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
