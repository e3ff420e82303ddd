"""Stage `tokenize`: documents → SentencePiece tokenizer + challenge-format shards + manifest.

Two streaming passes over the corpus: the first trains the tokenizer on the training
documents (skipped with an existing tokenizer), the second encodes every document in
multi-threaded batches and streams the tokens into shards. The output folder is built
under a temporary name and renamed into place only when complete.

With `case_ops`, every document is CaseOps-transformed first (golfctl/caseops.py), the tokenizer
reserves the four operators as pieces of their own, and the validation split gets a byte sidecar
(golfctl/shards.py): each token's original UTF-8 bytes, BOS 0, so that BPB counts the original text.
The validation split's manifest "bytes" is the sidecar's sum; the training split's, which no score
uses, its documents' UTF-8 length.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import sentencepiece as spm

from golfctl import __version__, caseops
from golfctl.bpb import ByteTables
from golfctl.corpus import Corpus, open_corpus
from golfctl.dataset import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    PLAIN_MANIFEST_VERSION,
    TOKENIZER_NAME,
    is_dataset_folder,
)
from golfctl.errors import UserError, refuse_problems
from golfctl.fileio import sha256_bytes, staged_directory
from golfctl.outputs import check_output_folder
from golfctl.progress import Progress
from golfctl.shards import (
    BOS_ID,
    MAX_TOKEN_BYTES,
    MAX_VOCAB,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    ShardWriter,
    sidecar_stream,
)
from golfctl.tokenizer import (
    check_reserved_pieces,
    check_shard_tokenizer,
    load_tokenizer,
    parse_tokenizer,
    train_tokenizer,
    trainer_settings,
    training_pieces,
)

# Encoding batches: big enough to keep every core busy, small enough to bound memory.
BATCH_MAX_DOCS = 1024
BATCH_MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class TokenizeConfig:
    out: Path = field(metadata={"help": "Dataset folder to create."})
    corpus: str = field(default="shakespeare", metadata={
        "help": "`shakespeare` (embedded plays), a .jsonl with a `text` field per line, a .txt file or a folder "
                "of .txt files."})
    vocab_size: int = field(default=1024, metadata={"help": f"Tokenizer vocabulary (at most {MAX_VOCAB:,})."})
    tokenizer: Path | None = field(default=None, metadata={
        "help": "Reuse this SentencePiece .model instead of training one."})
    val_docs: int | None = field(default=None, metadata={
        "help": "The first N documents form the validation split [default: 4 plays for shakespeare, 50,000 for "
                ".jsonl, 1 for a folder, 0 for a .txt]."})
    shard_tokens: int = field(default=100_000_000, metadata={"help": "Tokens per shard file."})
    force: bool = field(default=False, metadata={"help": "Replace an existing dataset in --out."})
    threads: int = field(default=0, metadata={"help": "Encoding threads [default: 0, all cores]."})
    # SentencePiece holds all its training text in memory: cap it (the first training documents).
    tokenizer_train_mb: int = field(default=500, metadata={
        "help": "Train the tokenizer on at most this much text (the first training documents)."})
    case_ops: bool = field(default=False, metadata={
        "help": "CaseOps (the 2026-04-27 record's lossless_caps_caseops_v1): lowercase ASCII letters and mark "
                "capitals with operators U+E001-U+E004 before tokenizing; the validation split gets a byte "
                "sidecar so that bits per byte count the original text."})

    @property
    def reserved(self) -> tuple[str, ...]:
        """Symbols the tokenizer must hold as pieces of their own."""
        return caseops.MARKERS if self.case_ops else ()

    def problems(self) -> list[str]:
        p = []
        if not 1 <= self.vocab_size <= MAX_VOCAB:
            p.append(f"--vocab-size {self.vocab_size} is out of range: shards store uint16 ids, so 1..{MAX_VOCAB}")
        if self.val_docs is not None and self.val_docs < 1:
            p.append(f"--val-docs must be >= 1 (every stage after tokenize scores the validation split), "
                     f"got {self.val_docs}")
        if self.threads < 0:
            p.append(f"--threads must be >= 0, got {self.threads}")
        p += [f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
              for k in ("shard_tokens", "tokenizer_train_mb") if getattr(self, k) < 1]
        return p


def run_tokenize(cfg: TokenizeConfig) -> dict:
    """Build the dataset folder `cfg.out`; return its manifest."""
    refuse_problems(cfg.problems())
    corpus_path = Path(cfg.corpus) if Path(cfg.corpus).exists() else None  # else the embedded corpus's name
    out = check_output_folder(cfg.out, inputs=(corpus_path, cfg.tokenizer))
    replace = _check_output_folder(out, cfg.force)
    corpus = open_corpus(cfg.corpus)
    val_docs = corpus.default_val_docs if cfg.val_docs is None else cfg.val_docs
    if val_docs < 1:
        raise UserError(f"corpus {corpus.name} is one document, and a dataset needs validation documents as well as "
                        "training ones; pass a folder of .txt files or a .jsonl (one document per file or line)")
    _say(f"tokenize: corpus {corpus.kind} ({corpus.name}), first {val_docs:,} documents for validation")
    with staged_directory(out, replace=replace) as stage:
        model, trained_on = _tokenizer_model(cfg, corpus, val_docs)
        (stage / TOKENIZER_NAME).write_bytes(model)
        sp = parse_tokenizer(model, TOKENIZER_NAME)
        check_shard_tokenizer(sp, TOKENIZER_NAME)
        check_reserved_pieces(sp, cfg.reserved, str(cfg.tokenizer or TOKENIZER_NAME))
        encoded = _encode_corpus(corpus, sp, stage, val_docs, cfg)
        if encoded.documents == 0:
            raise UserError(f"corpus {corpus.name} holds no documents")
        if val_docs > encoded.documents:
            raise UserError(
                f"--val-docs {val_docs:,} asks for more documents than the corpus holds ({encoded.documents:,}); "
                "pass a smaller --val-docs"
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            # what version 2 adds is CaseOps': a dataset without it stays readable by older golfctl
            "version": MANIFEST_VERSION if cfg.case_ops else PLAIN_MANIFEST_VERSION,
            "created_by": {"golfctl": __version__, "sentencepiece": spm.__version__},
            "source": {
                **corpus.describe(),
                "documents": encoded.documents,
                "documents_sha256": encoded.documents_sha256,
                "val_docs": val_docs,
            },
            "tokenizer": {
                "file": TOKENIZER_NAME,
                "sha256": sha256_bytes(model),
                "vocab_size": sp.vocab_size(),
                "bos_id": sp.bos_id(),
                "trained_on": trained_on,  # None when reused with --tokenizer
                "trainer_settings": trainer_settings(cfg.reserved) if trained_on else None,
            },
            "shard_tokens": cfg.shard_tokens,
            "splits": {name: split.finish() for name, split in encoded.splits.items()},
        }
        if cfg.case_ops:
            manifest["text_transform"] = caseops.CASEOPS
        (stage / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name, split in manifest["splits"].items():
        _say(f"  {name}: {split['docs']:,} docs, {split['tokens']:,} tokens, {split['bytes']:,} bytes, "
             f"{len(split['shards'])} shard(s)")
    _say(f"wrote {out}")
    return manifest


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_output_folder(out: Path, force: bool) -> bool:
    """Return whether `out` exists and may be replaced; refuse to clobber anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder path")
    if is_dataset_folder(out):
        if not force:
            raise UserError(f"--out {out} already holds a dataset; pass --force to replace it")
        return True
    if any(out.iterdir()):
        raise UserError(f"--out {out} holds files that are not a dataset; choose an empty or new folder")
    return True


def _tokenizer_model(cfg: TokenizeConfig, corpus: Corpus, val_docs: int) -> tuple[bytes, dict | None]:
    """The serialized tokenizer, and what it was trained on (None for a reused one)."""
    if cfg.tokenizer is not None:
        load_tokenizer(cfg.tokenizer)  # validates before we copy it
        _say(f"tokenize: reusing tokenizer {cfg.tokenizer}")
        return Path(cfg.tokenizer).read_bytes(), None
    train = _TrainingDocuments(corpus, val_docs, cfg.tokenizer_train_mb * 1_000_000, cfg.case_ops)
    transformed = ", CaseOps-transformed" if cfg.case_ops else ""
    _say(f"tokenize: training a {cfg.vocab_size}-token BPE tokenizer on the training documents{transformed}")
    try:
        model = train_tokenizer(training_pieces(train), cfg.vocab_size, cfg.reserved)
    except UserError:
        train.reraise()
        if train.seen == 0:
            raise UserError(f"corpus {corpus.name} holds no documents") from None
        if train.bytes == 0:
            raise UserError(
                f"no training text to train a tokenizer on: the corpus's {train.seen:,} documents are "
                f"validation (the first {val_docs:,}) or empty: use a larger corpus, a smaller --val-docs, "
                "or reuse a tokenizer with --tokenizer"
            ) from None
        raise
    train.reraise()
    _say(f"tokenize: trained on {train.docs:,} documents ({train.bytes / 1e6:,.1f} MB)")
    return model, {"docs": train.docs, "bytes": train.bytes}


class _TrainingDocuments:
    """Training documents for the SentencePiece trainer.

    The trainer pulls from this iterator inside C++, which would swallow our errors, so a
    `UserError` stops the iteration and is raised again by `reraise` after training.
    """

    def __init__(self, corpus: Corpus, val_docs: int, max_bytes: int, case_ops: bool):
        self.corpus = corpus
        self.val_docs = val_docs
        self.max_bytes = max_bytes
        self.case_ops = case_ops
        self.seen = 0
        self.docs = 0
        self.bytes = 0
        self.error: UserError | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for index, doc in enumerate(self.corpus.documents()):
                self.seen += 1
                if self.bytes >= self.max_bytes:
                    return
                if index >= self.val_docs:
                    self.docs += 1
                    self.bytes += len(doc.strip().encode("utf-8"))
                    yield caseops.encode(doc) if self.case_ops else doc
        except UserError as exc:
            self.error = exc

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class _SplitWriter:
    def __init__(self, folder: Path, name: str, shard_tokens: int, sidecar: bool = False):
        self.shards = ShardWriter(folder, name, shard_tokens)
        # the same shard size and appends as the tokens: each sidecar shard parallels its token shard
        self.sidecar = ShardWriter(folder, sidecar_stream(name), shard_tokens) if sidecar else None
        self.docs = 0
        self.tokens = 0
        self.bytes = 0

    def add(self, tokens: np.ndarray, docs: int, n_bytes: int, target_bytes: np.ndarray | None = None) -> None:
        """Append whole documents (each starting with BOS), worth `n_bytes`: by the BPB rule, or the sum of
        `target_bytes`, their sidecar entries (one per token), for a split that has one."""
        self.shards.append(tokens)
        if self.sidecar is not None:
            self.sidecar.append(target_bytes)
        self.docs += docs
        self.tokens += tokens.size
        self.bytes += n_bytes

    def finish(self) -> dict:
        entry = {"docs": self.docs, "tokens": self.tokens, "bytes": self.bytes, "shards": _records(self.shards)}
        if self.sidecar is not None:
            entry["byte_sidecar"] = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
                                     "shards": _records(self.sidecar)}
        return entry


def _records(writer: ShardWriter) -> list[dict]:
    return [{"file": r.file, "tokens": r.tokens, "sha256": r.sha256} for r in writer.close()]


@dataclass
class _Encoded:
    documents: int
    documents_sha256: str
    splits: dict[str, _SplitWriter]


def _encode_corpus(corpus: Corpus, sp: spm.SentencePieceProcessor, folder: Path, val_docs: int,
                   cfg: TokenizeConfig) -> _Encoded:
    tables = ByteTables.from_tokenizer(sp)
    threads = cfg.threads or os.cpu_count() or 1
    splits = {"val": _SplitWriter(folder, "val", cfg.shard_tokens, sidecar=cfg.case_ops),
              "train": _SplitWriter(folder, "train", cfg.shard_tokens)}
    source_hash = hashlib.sha256()
    progress = Progress("encode", "docs", total_bytes=corpus.size_bytes)
    index = 0
    for batch in _batches(corpus.documents()):
        raw = [doc.encode("utf-8") for doc in batch]
        val_count = max(0, min(len(batch), val_docs - index))
        if cfg.case_ops:
            val_ids, val_bytes = _encode_caseops_val(sp, batch[:val_count], index, threads)
            ids_batch = val_ids + sp.encode([caseops.encode(doc) for doc in batch[val_count:]], out_type=int,
                                            num_threads=threads)
        else:
            ids_batch = sp.encode(batch, out_type=int, num_threads=threads)
            if val_count:
                _check_val_bytes(sp, tables, ids_batch[:val_count], index, threads)
        for text in raw:
            source_hash.update(len(text).to_bytes(8, "little"))
            source_hash.update(text)
        flat = _with_bos(ids_batch, BOS_ID)
        cut = sum(len(ids) + 1 for ids in ids_batch[:val_count])
        if val_count:
            val = flat[:cut]
            if cfg.case_ops:
                target_bytes = _with_bos(val_bytes, 0)  # BOS stands for no text
                splits["val"].add(val, val_count, int(target_bytes.sum()), target_bytes)
            else:
                splits["val"].add(val, val_count, tables.stream_bytes(val))
        if val_count < len(batch):
            train = flat[cut:]
            # a CaseOps training split has no sidecar: its documents' length says what it holds
            n_bytes = sum(map(len, raw[val_count:])) if cfg.case_ops else tables.stream_bytes(train)
            splits["train"].add(train, len(batch) - val_count, n_bytes)
        index += len(batch)
        progress.update(len(batch), sum(len(t) for t in raw))
    progress.close()
    return _Encoded(index, source_hash.hexdigest(), splits)


def _with_bos(docs: list, bos: int) -> np.ndarray:
    """One flat uint16 array of the documents' values, `bos` before each. One array per batch: per-document
    numpy calls would cost more than the encoding itself on small web documents."""
    lengths = np.array([len(doc) for doc in docs], dtype=np.int64)
    body = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.uint16, count=int(lengths.sum()))
    return np.insert(body, np.cumsum(lengths) - lengths, bos)


def _encode_caseops_val(sp: spm.SentencePieceProcessor, docs: list[str], first_index: int,
                        threads: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Token ids of the CaseOps-transformed validation documents, and each token's original UTF-8 bytes
    (caseops.piece_original_bytes over its span, the record's surface count). Like the record's, the
    count leaves out what SentencePiece drops before the first token and after the last (leading and
    trailing whitespace): each document's bytes must be the UTF-8 length of the original text its
    tokens' spans cover, decoded back from the transform."""
    transformed = [caseops.encode(doc) for doc in docs]
    encoded = sp.encode(transformed, return_type="offset_mapping", num_threads=threads)
    ids, counts = [], []
    for offset, (text, tokens) in enumerate(zip(transformed, encoded)):
        spans = tokens["offsets"]
        n_bytes = caseops.piece_original_bytes(text, spans)
        covered = text[spans[0][0]:spans[-1][1]] if spans else ""
        expected = len(caseops.decode(covered).encode("utf-8"))
        if int(n_bytes.sum()) != expected:
            raise UserError(f"validation document {first_index + offset}: its tokens count {int(n_bytes.sum())} "
                            f"original bytes but their text has {expected}; this tokenizer cannot be scored in "
                            "bits per byte on CaseOps text")
        if n_bytes.size and n_bytes.max() > MAX_TOKEN_BYTES:
            raise UserError(f"validation document {first_index + offset} has a token worth {n_bytes.max():,} bytes "
                            f"(a long run of whitespace?), more than a sidecar entry holds ({MAX_TOKEN_BYTES:,}); "
                            "shorten that run in the corpus")
        ids.append(tokens["ids"])
        counts.append(n_bytes)
    return ids, counts


def _check_val_bytes(sp: spm.SentencePieceProcessor, tables: ByteTables, ids_batch: list[list[int]],
                     first_index: int, threads: int) -> None:
    """BPB is only right if the byte rule gives each validation document's decoded UTF-8 length."""
    texts = sp.decode(ids_batch, num_threads=threads)
    for offset, (ids, text) in enumerate(zip(ids_batch, texts)):
        by_rule = tables.stream_bytes(np.array([BOS_ID, *ids], dtype=np.int64))
        actual = len(text.encode("utf-8"))
        if by_rule != actual:
            raise UserError(
                f"validation document {first_index + offset}: the tokenizer's byte table gives {by_rule} bytes "
                f"but its decoded text has {actual}; this tokenizer cannot be scored in bits per byte"
            )


def _batches(documents: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if len(batch) >= BATCH_MAX_DOCS or size >= BATCH_MAX_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
