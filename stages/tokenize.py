"""Stage `tokenize`: documents → SentencePiece tokenizer + challenge-format shards + manifest.

Two streaming passes over the corpus: the first trains the tokenizer on the training
documents (skipped with an existing tokenizer), the second encodes every document in
multi-threaded batches and streams the tokens into shards. The output folder is built
under a temporary name and renamed into place only when complete.
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

from golfctl import __version__
from golfctl.bpb import ByteTables
from golfctl.corpus import Corpus, open_corpus
from golfctl.dataset import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, TOKENIZER_NAME, is_dataset_folder
from golfctl.errors import UserError, refuse_problems
from golfctl.fileio import sha256_bytes, staged_directory
from golfctl.outputs import check_output_folder
from golfctl.progress import Progress
from golfctl.shards import BOS_ID, MAX_VOCAB, ShardWriter
from golfctl.tokenizer import (
    CHALLENGE_TRAINER_SETTINGS,
    check_shard_tokenizer,
    load_tokenizer,
    parse_tokenizer,
    train_tokenizer,
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
            "version": MANIFEST_VERSION,
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
                "trainer_settings": CHALLENGE_TRAINER_SETTINGS if trained_on else None,
            },
            "shard_tokens": cfg.shard_tokens,
            "splits": {name: split.finish() for name, split in encoded.splits.items()},
        }
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
    train = _TrainingDocuments(corpus, val_docs, cfg.tokenizer_train_mb * 1_000_000)
    _say(f"tokenize: training a {cfg.vocab_size}-token BPE tokenizer on the training documents")
    try:
        model = train_tokenizer(training_pieces(train), cfg.vocab_size)
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

    def __init__(self, corpus: Corpus, val_docs: int, max_bytes: int):
        self.corpus = corpus
        self.val_docs = val_docs
        self.max_bytes = max_bytes
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
                    yield doc
        except UserError as exc:
            self.error = exc

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class _SplitWriter:
    def __init__(self, folder: Path, name: str, shard_tokens: int):
        self.shards = ShardWriter(folder, name, shard_tokens)
        self.docs = 0
        self.tokens = 0
        self.bytes = 0

    def add(self, tokens: np.ndarray, docs: int, n_bytes: int) -> None:
        """Append whole documents (each starting with BOS), worth `n_bytes` by the BPB rule."""
        self.shards.append(tokens)
        self.docs += docs
        self.tokens += tokens.size
        self.bytes += n_bytes

    def finish(self) -> dict:
        records = self.shards.close()
        return {
            "docs": self.docs,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "shards": [{"file": r.file, "tokens": r.tokens, "sha256": r.sha256} for r in records],
        }


@dataclass
class _Encoded:
    documents: int
    documents_sha256: str
    splits: dict[str, _SplitWriter]


def _encode_corpus(corpus: Corpus, sp: spm.SentencePieceProcessor, folder: Path, val_docs: int,
                   cfg: TokenizeConfig) -> _Encoded:
    tables = ByteTables.from_tokenizer(sp)
    threads = cfg.threads or os.cpu_count() or 1
    splits = {"val": _SplitWriter(folder, "val", cfg.shard_tokens),
              "train": _SplitWriter(folder, "train", cfg.shard_tokens)}
    source_hash = hashlib.sha256()
    progress = Progress("encode", "docs", total_bytes=corpus.size_bytes)
    index = 0
    for batch in _batches(corpus.documents()):
        raw = [doc.encode("utf-8") for doc in batch]
        ids_batch = sp.encode(batch, out_type=int, num_threads=threads)
        val_count = max(0, min(len(batch), val_docs - index))
        if val_count:
            _check_val_bytes(sp, tables, ids_batch[:val_count], index, threads)
        for text in raw:
            source_hash.update(len(text).to_bytes(8, "little"))
            source_hash.update(text)
        # One flat array per batch, BOS before each document: per-document numpy calls
        # would cost more than the encoding itself on small web documents.
        lengths = np.array([len(ids) for ids in ids_batch], dtype=np.int64)
        body = np.fromiter(itertools.chain.from_iterable(ids_batch), dtype=np.uint16, count=int(lengths.sum()))
        flat = np.insert(body, np.cumsum(lengths) - lengths, BOS_ID)
        ends = np.cumsum(lengths + 1)
        cut = int(ends[val_count - 1]) if val_count else 0
        for name, tokens, docs in (("val", flat[:cut], val_count), ("train", flat[cut:], len(batch) - val_count)):
            if docs:
                splits[name].add(tokens, docs, tables.stream_bytes(tokens))
        index += len(batch)
        progress.update(len(batch), sum(len(t) for t in raw))
    progress.close()
    return _Encoded(index, source_hash.hexdigest(), splits)


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
