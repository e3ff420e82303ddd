"""Dataset folders: shards of both splits, the tokenizer and `manifest.json`.

A golfctl dataset folder holds `manifest.json` (format `golfctl.dataset`, version 1),
`tokenizer.model` and `fineweb_{train,val}_NNNNNN.bin`. The manifest lists the tokenizer's
sha256 and vocab size, documents/tokens/bytes per split and every shard with its token
count and sha256. An official challenge folder (shards only, no manifest) is accepted too;
its tokenizer then comes from elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golfctl.errors import UserError
from golfctl.fileio import sha256_bytes, sha256_file
from golfctl.shards import SPLITS, load_shard, read_shard_header

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "golfctl.dataset"
MANIFEST_VERSION = 1
TOKENIZER_NAME = "tokenizer.model"


@dataclass(frozen=True)
class Shard:
    path: Path
    tokens: int
    sha256: str | None  # None in official folders, which publish no checksums


@dataclass(frozen=True)
class Split:
    name: str
    shards: tuple[Shard, ...]
    docs: int | None
    bytes: int | None  # UTF-8 bytes of the split's targets by the BPB rule (golfctl datasets only)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def load_tokens(self) -> np.ndarray:
        """The whole split as one in-memory uint16 stream (meant for the validation split)."""
        if not self.shards:
            return np.zeros(0, dtype=np.uint16)
        return np.concatenate([load_shard(s.path) for s in self.shards])


@dataclass(frozen=True)
class Dataset:
    root: Path
    manifest: dict | None
    splits: dict[str, Split]

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.root / TOKENIZER_NAME
        return path if path.is_file() else None

    @property
    def vocab_size(self) -> int | None:
        return self.manifest["tokenizer"]["vocab_size"] if self.manifest else None

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.manifest["tokenizer"]["sha256"] if self.manifest else None


def is_dataset_folder(root: Path) -> bool:
    root = Path(root)
    return (root / MANIFEST_NAME).is_file() or any(root.glob("fineweb_*_*.bin"))


def open_dataset(root: str | Path) -> Dataset:
    """Open and validate a dataset folder: every shard's header is checked against its size."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise UserError(f"dataset folder {root} {what}; run `golfctl tokenize --out {root}` to make one")
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path)
        splits = {name: _split_from_manifest(root, name, manifest) for name in SPLITS}
    else:
        manifest = None
        splits = {name: _split_from_glob(root, name) for name in SPLITS}
        if not any(split.shards for split in splits.values()):
            raise UserError(
                f"{root} holds no manifest.json and no fineweb_train_*.bin / fineweb_val_*.bin shards; "
                "point --data at a dataset folder"
            )
    return Dataset(root, manifest, splits)


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-create the dataset with `golfctl tokenize`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UserError(f"{path} is not a golfctl dataset manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
    if manifest.get("version") != MANIFEST_VERSION:
        raise UserError(
            f"{path} has manifest version {manifest.get('version')!r}; this golfctl reads version "
            f"{MANIFEST_VERSION}: re-create the dataset with this golfctl's `tokenize`"
        )
    try:
        for name in SPLITS:
            for entry in manifest["splits"][name]["shards"]:
                _ = (entry["file"], int(entry["tokens"]), entry["sha256"])
        _ = (int(manifest["tokenizer"]["vocab_size"]), manifest["tokenizer"]["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is missing or has a malformed field ({exc}); re-create the dataset") from None
    return manifest


def _split_from_manifest(root: Path, name: str, manifest: dict) -> Split:
    shards = []
    for entry in manifest["splits"][name]["shards"]:
        path = root / entry["file"]
        tokens = read_shard_header(path)
        if tokens != entry["tokens"]:
            raise UserError(
                f"shard {path} holds {tokens} tokens but {MANIFEST_NAME} lists {entry['tokens']}; "
                "the folder was modified after tokenizing: re-create it with `golfctl tokenize`"
            )
        shards.append(Shard(path, tokens, entry["sha256"]))
    info = manifest["splits"][name]
    return Split(name, tuple(shards), info.get("docs"), info.get("bytes"))


def _split_from_glob(root: Path, name: str) -> Split:
    paths = sorted(root.glob(f"fineweb_{name}_*.bin"))
    return Split(name, tuple(Shard(p, read_shard_header(p), None) for p in paths), None, None)


def checksum_mismatches(dataset: Dataset) -> list[str]:
    """Re-hash every shard (and the tokenizer) listed in the manifest; describe each mismatch."""
    problems = []
    for split in dataset.splits.values():
        for shard in split.shards:
            if shard.sha256 is not None and sha256_file(shard.path) != shard.sha256:
                problems.append(f"{shard.path.name}: sha256 differs from the manifest")
    if dataset.manifest is not None:
        tok = dataset.tokenizer_path
        if tok is None:
            problems.append(f"{TOKENIZER_NAME} is missing")
        elif sha256_file(tok) != dataset.tokenizer_sha256:
            problems.append(f"{TOKENIZER_NAME}: sha256 differs from the manifest")
    return problems


def dataset_identity(dataset: Dataset) -> str:
    """sha256 of the manifest, or of the shard list for official folders without one."""
    if dataset.manifest is not None:
        return sha256_file(dataset.root / MANIFEST_NAME)
    listing = [(s.path.name, s.tokens) for split in dataset.splits.values() for s in split.shards]
    return "shards:" + sha256_bytes(json.dumps(listing).encode())
