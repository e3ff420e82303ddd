"""Dataset folders: shards of both splits, the tokenizer and `manifest.json`.

A golfctl dataset folder holds `manifest.json` (format `golfctl.dataset`), `tokenizer.model` and
`fineweb_{train,val}_NNNNNN.bin`. The manifest lists the tokenizer's sha256 and vocab size,
documents/tokens/bytes per split and every shard with its token count and sha256.

Manifest version 2 adds CaseOps (golfctl/caseops.py): `"text_transform": "lossless_caps_caseops_v1"`
(the documents were transformed before tokenizing) and, on the val split, `"byte_sidecar": {"format":
"golfctl.token_bytes", "version": 1, "shards": [{file, tokens, sha256}, …]}`, the original text's bytes
per token (golfctl/shards.py), whose sum is the split's "bytes". A dataset without either is written as
version 1, which golfctl has always read; both versions are read.

An official challenge folder (shards only, no manifest) is accepted too; its tokenizer then comes
from elsewhere: `--tokenizer`, or where the challenge's download script (openai/parameter-golf
data/cached_challenge_fineweb.py) puts it, found by `find_official_tokenizer`. The 2026-04-27
record's CaseOps folder, fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved, holds its val sidecar
as fineweb_val_bytes_NNNNNN.bin beside the shards; its tokenizer is
tokenizers/fineweb_{V}_bpe_lossless_caps_caseops_v1_reserved.model.

Loading a split's shards (`Split.load_tokens`, `Split.load_shards`) checks each against the
manifest's sha256 and every id against the vocabulary, in the pass that reads it (golfctl/shards.py);
`open_dataset(..., verify=False)` skips the checksums. Official folders publish no checksums.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golfctl.caseops import CASEOPS
from golfctl.errors import UserError
from golfctl.fileio import sha256_bytes, sha256_file
from golfctl.shards import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    SPLITS,
    TOKEN_DTYPE,
    load_shard,
    map_shards,
    read_shard,
    read_shard_header,
    shard_paths,
    sidecar_stream,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "golfctl.dataset"
MANIFEST_VERSION = 2
PLAIN_MANIFEST_VERSION = 1  # what a dataset without text transform or sidecar is written as
TEXT_TRANSFORMS = (CASEOPS,)
TOKENIZER_NAME = "tokenizer.model"
# The challenge's layout: data/manifest.json, data/datasets/fineweb10B_sp{V}/ and
# data/tokenizers/fineweb_{V}_bpe.model (.vocab beside it); the 2026-04-27 record's CaseOps data:
# data/datasets/fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved/ and
# data/tokenizers/fineweb_{V}_bpe_lossless_caps_caseops_v1_reserved.model.
CHALLENGE_MANIFEST_NAME = "manifest.json"
CASEOPS_FOLDER_SUFFIX = f"_{CASEOPS}_reserved"
OFFICIAL_FOLDER = re.compile(rf"fineweb\w*?_sp(\d+)({re.escape(CASEOPS_FOLDER_SUFFIX)})?")


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
    # UTF-8 bytes of the split's targets (golfctl datasets only): by the BPB rule, or the sidecar's sum
    bytes: int | None
    # ids must lie below it: the manifest's tokenizer vocab, an official folder's fineweb10B_sp{V}, else unknown
    vocab_size: int | None = None
    verify: bool = True  # check each shard's sha256 (when the manifest records one) as it is loaded
    # the byte sidecar's shards (golfctl/shards.py), as many entries in all as the split has tokens; None: none
    sidecar: tuple[Shard, ...] | None = None

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def load_tokens(self, vocab_size: int | None = None) -> np.ndarray:
        """The whole split as one in-memory uint16 stream (meant for the validation split), every shard
        checked as it is read (`_checks`; `vocab_size`, the model's, replaces the split's own)."""
        return _read_concatenated(self.shards, lambda shard: self._checks(shard, vocab_size))

    def load_target_bytes(self) -> np.ndarray | None:
        """The byte sidecar as one (tokens,) uint16 array, aligned with `load_tokens`: entry t is what target
        position t is worth in BPB. None for a split without a sidecar (its bytes follow the BPB rule)."""
        if self.sidecar is None:
            return None
        return _read_concatenated(self.sidecar, lambda shard: (shard.sha256 if self.verify else None,))

    def load_shards(self, vocab_size: int | None = None) -> list[np.ndarray]:
        """Each shard memory-mapped (for random access to the training split), checked as `load_tokens` does."""
        return map_shards(lambda i: load_shard(self.shards[i].path, *self._checks(self.shards[i], vocab_size)),
                          len(self.shards))

    def _checks(self, shard: Shard, vocab_size: int | None) -> tuple[str | None, int | None]:
        """(sha256 to verify, vocabulary bound) for `shard`; None: not checked."""
        return (shard.sha256 if self.verify else None), (vocab_size if vocab_size is not None else self.vocab_size)


def _read_concatenated(shards: tuple[Shard, ...], checks: Callable[[Shard], tuple]) -> np.ndarray:
    """The shards read into one uint16 array, in parallel, each checked by `read_shard`'s `checks(shard)`."""
    out = np.empty(sum(s.tokens for s in shards), dtype=TOKEN_DTYPE)
    starts = np.cumsum([0] + [s.tokens for s in shards])
    map_shards(lambda i: read_shard(shards[i].path, out[starts[i]:starts[i + 1]], *checks(shards[i])), len(shards))
    return out


@dataclass(frozen=True)
class Dataset:
    root: Path
    manifest: dict | None
    splits: dict[str, Split]

    @property
    def tokenizer_path(self) -> Path | None:
        """The folder's own tokenizer.model or, for an official folder, the challenge's (see find_tokenizer)."""
        return self.find_tokenizer().path

    def find_tokenizer(self, vocab_size: int | None = None) -> TokenizerSearch:
        """Where this dataset's tokenizer is: its own tokenizer.model, else for an official folder
        (no manifest) the challenge's, by `find_official_tokenizer`; `vocab_size` (the model's) is
        used only when the folder's name does not give it. A discovered file is announced on stderr,
        once per Dataset."""
        own = self.root / TOKENIZER_NAME
        if own.is_file():
            return TokenizerSearch(own, "the dataset's own", (str(own),))
        if self.manifest is not None:
            return TokenizerSearch(None, "", (str(own),))
        search = find_official_tokenizer(self.root, vocab_size)
        announced = self.__dict__.setdefault("_announced", set())  # frozen: only this cache changes
        if search.path is not None and search.path not in announced:
            announced.add(search.path)
            _say(f"tokenizer: no --tokenizer given, using {search.path} ({search.how})")
        return search

    @property
    def vocab_size(self) -> int | None:
        return self.manifest["tokenizer"]["vocab_size"] if self.manifest else None

    @property
    def text_transform(self) -> str | None:
        """CASEOPS when the documents were case-transformed before tokenizing (the manifest's, or an official
        folder's name), else None."""
        if self.manifest is not None:
            return self.manifest.get("text_transform")
        return official_folder_transform(self.root)

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.manifest["tokenizer"]["sha256"] if self.manifest else None


@dataclass(frozen=True)
class TokenizerSearch:
    path: Path | None  # None: not found
    how: str  # why this file, for the announcement
    looked_at: tuple[str, ...]  # every place tried, in order (the error names them)


def resolve_tokenizer(dataset: Dataset, explicit: Path | None = None, vocab_size: int | None = None) -> Path:
    """The tokenizer to score `dataset` with: `explicit` (--tokenizer) always wins; else
    `Dataset.find_tokenizer`. Raises the user error naming every place it looked."""
    if explicit is not None:
        return Path(explicit)
    search = dataset.find_tokenizer(vocab_size)
    if search.path is not None:
        return search.path
    if dataset.manifest is not None:
        raise UserError(f"{dataset.root} has no {TOKENIZER_NAME}; pass --tokenizer with the dataset's .model file")
    raise UserError(f"{dataset.root} has no {TOKENIZER_NAME} and the challenge's was not found (looked at "
                    f"{'; '.join(search.looked_at)}); pass --tokenizer with the dataset's .model file")


def find_official_tokenizer(root: Path, vocab_size: int | None = None) -> TokenizerSearch:
    """The challenge's tokenizer for the official dataset folder `root` (data/datasets/NAME/).

    1. data/manifest.json, as the challenge's download script writes it: the entry of
       "datasets" whose "name" is NAME gives a "tokenizer_name"; that entry of "tokenizers"
       gives "model_path", relative to data/ (or absolute).
    2. Else data/tokenizers/fineweb_{V}_bpe.model, V from NAME (fineweb10B_sp{V}), else from the
       manifest's dataset entry ("vocab_size"), else `vocab_size` (the model's); for a CaseOps folder
       (fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved), fineweb_{V}_bpe_lossless_caps_caseops_v1_reserved.model.
    A named file that does not exist is passed over (and listed in `looked_at`).
    """
    given = Path(root)
    folder = Path(os.path.abspath(given))
    data = folder.parent.parent
    shown = (lambda p: p) if given.is_absolute() else (lambda p: Path(os.path.relpath(p)))
    looked_at: list[str] = []
    manifest_path = data / CHALLENGE_MANIFEST_NAME
    entry, tokenizer = _challenge_manifest_entries(manifest_path, folder.name)
    if tokenizer is None:
        looked_at.append(f"{shown(manifest_path)} (" + ("absent" if not manifest_path.is_file() else
                         f"names no SentencePiece tokenizer for {folder.name}") + ")")
    else:
        named = data / tokenizer
        if named.is_file():
            return TokenizerSearch(shown(named), f"named for {folder.name} by {shown(manifest_path)}",
                                   (*looked_at, str(shown(named))))
        looked_at.append(f"{shown(named)} (named by {shown(manifest_path)})")
    vocab = official_folder_vocab(folder) or _int_or_none((entry or {}).get("vocab_size")) or vocab_size
    if vocab is None:
        looked_at.append(f"{shown(data / 'tokenizers')}/fineweb_V_bpe.model (V unknown: the folder is not named "
                         "fineweb10B_sp{V})")
        return TokenizerSearch(None, "", tuple(looked_at))
    suffix = CASEOPS_FOLDER_SUFFIX if official_folder_transform(folder) else ""
    conventional = data / "tokenizers" / f"fineweb_{vocab}_bpe{suffix}.model"
    looked_at.append(str(shown(conventional)))
    if conventional.is_file():
        return TokenizerSearch(shown(conventional), f"the challenge's layout for vocab {vocab}", tuple(looked_at))
    return TokenizerSearch(None, "", tuple(looked_at))


def official_folder_vocab(root: Path) -> int | None:
    """V of an official folder named as the challenge names them (fineweb10B_sp{V}, or the CaseOps
    fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved); None otherwise."""
    match = OFFICIAL_FOLDER.fullmatch(Path(os.path.abspath(root)).name)
    return int(match.group(1)) if match else None


def official_folder_transform(root: Path) -> str | None:
    """CASEOPS for an official CaseOps folder (fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved), else None."""
    match = OFFICIAL_FOLDER.fullmatch(Path(os.path.abspath(root)).name)
    return CASEOPS if match and match.group(2) else None


def _challenge_manifest_entries(path: Path, name: str) -> tuple[dict | None, str | None]:
    """The challenge manifest's entry for dataset `name` and its tokenizer's model_path (None: none)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    if not isinstance(manifest, dict):
        return None, None
    entry = next((d for d in _dicts(manifest.get("datasets")) if d.get("name") == name), None)
    if entry is None:
        return None, None
    tokenizer = next((t for t in _dicts(manifest.get("tokenizers")) if t.get("name") == entry.get("tokenizer_name")),
                     {})
    # SentencePiece tokenizers carry "model_path" (and "vocab_path"); the byte260 one only a JSON "path".
    model = tokenizer.get("model_path") or tokenizer.get("path")
    return entry, model if isinstance(model, str) and model.endswith(".model") else None


def _dicts(value) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _say(line: str) -> None:
    """A progress line on stderr, from rank 0 only (every torchrun rank opens the dataset)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def is_dataset_folder(root: Path) -> bool:
    root = Path(root)
    return (root / MANIFEST_NAME).is_file() or any(root.glob("fineweb_*_*.bin"))


def open_dataset(root: str | Path, verify: bool = True) -> Dataset:
    """Open and validate a dataset folder: every shard's header is checked against its size. Its shards'
    sha256 are checked when they are loaded, unless `verify` is False."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise UserError(f"dataset folder {root} {what}; run `golfctl tokenize --out {root}` to make one")
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path)
        splits = {name: _split_from_manifest(root, name, manifest, verify) for name in SPLITS}
    else:
        manifest = None
        splits = {name: _split_from_glob(root, name, official_folder_vocab(root), official_folder_transform(root))
                  for name in SPLITS}
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
    if manifest.get("version") not in (PLAIN_MANIFEST_VERSION, MANIFEST_VERSION):
        raise UserError(
            f"{path} has manifest version {manifest.get('version')!r}; this golfctl reads versions "
            f"{PLAIN_MANIFEST_VERSION} and {MANIFEST_VERSION}: re-create the dataset with this golfctl's `tokenize`"
        )
    try:
        for name in SPLITS:
            for entry in _shard_entries(manifest, name):
                _ = (entry["file"], int(entry["tokens"]), entry["sha256"])
        _ = (int(manifest["tokenizer"]["vocab_size"]), manifest["tokenizer"]["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is missing or has a malformed field ({exc}); re-create the dataset") from None
    _check_version_2_fields(path, manifest)
    return manifest


def _shard_entries(manifest: dict, split: str) -> list:
    """The manifest's shard entries of `split`: its token shards, then its sidecar's if it has one."""
    info = manifest["splits"][split]
    return info["shards"] + (info["byte_sidecar"]["shards"] if "byte_sidecar" in info else [])


def _check_version_2_fields(path: Path, manifest: dict) -> None:
    """A known text transform and sidecar format, neither in a version-1 manifest, and a CaseOps val split
    with its sidecar (else its bytes would be the transformed text's)."""
    sidecars = [manifest["splits"][name]["byte_sidecar"] for name in SPLITS
                if "byte_sidecar" in manifest["splits"][name]]
    transform = manifest.get("text_transform")
    if manifest["version"] == PLAIN_MANIFEST_VERSION and (sidecars or transform is not None):
        raise UserError(f"{path} is version {PLAIN_MANIFEST_VERSION} but has a text transform or byte sidecar, "
                        "which version 1 does not have; re-create the dataset with `golfctl tokenize`")
    if transform is not None and transform not in TEXT_TRANSFORMS:
        raise UserError(f"{path} names text transform {transform!r}, which this golfctl does not know (it knows "
                        f"{', '.join(TEXT_TRANSFORMS)}); re-create the dataset with this golfctl's `tokenize`")
    if transform is not None and "byte_sidecar" not in manifest["splits"]["val"]:
        raise UserError(f"{path} names text transform {transform} but lists no validation byte sidecar, without "
                        "which bits per byte cannot be counted on the original text; re-create the dataset with "
                        "`golfctl tokenize --case-ops`")
    for sidecar in sidecars:
        if sidecar.get("format") != SIDECAR_FORMAT or sidecar.get("version") != SIDECAR_VERSION:
            raise UserError(f"{path} has a byte sidecar of format {sidecar.get('format')!r} version "
                            f"{sidecar.get('version')!r}; this golfctl reads {SIDECAR_FORMAT!r} version "
                            f"{SIDECAR_VERSION}: re-create the dataset with this golfctl's `tokenize`")


def _split_from_manifest(root: Path, name: str, manifest: dict, verify: bool) -> Split:
    info = manifest["splits"][name]
    shards = _listed_shards(root, info["shards"])
    sidecar = _listed_shards(root, info["byte_sidecar"]["shards"]) if "byte_sidecar" in info else None
    _check_sidecar_length(root, name, shards, sidecar)
    return Split(name, shards, info.get("docs"), info.get("bytes"), int(manifest["tokenizer"]["vocab_size"]),
                 verify, sidecar)


def _listed_shards(root: Path, entries: list[dict]) -> tuple[Shard, ...]:
    shards = []
    for entry in entries:
        path = root / entry["file"]
        tokens = read_shard_header(path)
        if tokens != entry["tokens"]:
            raise UserError(
                f"shard {path} holds {tokens} tokens but {MANIFEST_NAME} lists {entry['tokens']}; "
                "the folder was modified after tokenizing: re-create it with `golfctl tokenize`"
            )
        shards.append(Shard(path, tokens, entry["sha256"]))
    return tuple(shards)


def _split_from_glob(root: Path, name: str, vocab_size: int | None, transform: str | None) -> Split:
    shards = tuple(Shard(p, read_shard_header(p), None) for p in shard_paths(root, name))
    sidecar = tuple(Shard(p, read_shard_header(p), None) for p in shard_paths(root, sidecar_stream(name))) or None
    if sidecar is None and transform is not None and name == "val" and shards:
        raise UserError(f"{root} is a CaseOps dataset ({transform}) with no validation byte sidecar "
                        "(fineweb_val_bytes_*.bin): bits per byte cannot be counted on the original text without "
                        "it; download or prepare the folder again with its fineweb_val_bytes_*.bin files")
    _check_sidecar_length(root, name, shards, sidecar)
    return Split(name, shards, None, None, vocab_size, sidecar=sidecar)


def _check_sidecar_length(root: Path, name: str, shards: tuple[Shard, ...], sidecar: tuple[Shard, ...] | None) -> None:
    """A sidecar has one entry per token of its split."""
    if sidecar is None:
        return
    tokens, entries = sum(s.tokens for s in shards), sum(s.tokens for s in sidecar)
    if entries != tokens:
        raise UserError(f"{root}: the {name} byte sidecar ({', '.join(s.path.name for s in sidecar)}) holds "
                        f"{entries:,} entries but its token shards hold {tokens:,} tokens, one entry per token: "
                        "it belongs to other shards; re-create the dataset (`golfctl tokenize --case-ops`)")


def checksum_mismatches(dataset: Dataset) -> list[str]:
    """Re-hash every shard (and the tokenizer) listed in the manifest; describe each mismatch."""
    problems = []
    for split in dataset.splits.values():
        for shard in split.shards + (split.sidecar or ()):
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
    """sha256 of the manifest, or of the shard list (sidecars included) for official folders without one."""
    if dataset.manifest is not None:
        return sha256_file(dataset.root / MANIFEST_NAME)
    listing = [(s.path.name, s.tokens) for split in dataset.splits.values()
               for s in split.shards + (split.sidecar or ())]
    return "shards:" + sha256_bytes(json.dumps(listing).encode())
