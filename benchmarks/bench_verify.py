"""Benchmark: what checking inputs at load costs (shard sha256 + token-id range, model payload sha256).

Loading a shard now hashes it against the manifest and checks its ids against the vocabulary in
the pass that reads it (golfctl/shards.py). This script times loading with and without those
checks and prints the ratio verify / no-verify and the throughput in MB/s (10^6 bytes):

  demo dataset    artifacts/data if it exists, else the Shakespeare demo tokenized into a temp folder:
                  the validation split as load_validation_set reads it (Split.load_tokens), before
                  this change (np.concatenate of memory maps) and now, with and without checks; the
                  training split as TokenStream opens it (memory maps; with checks every shard is
                  read once at open, without them nothing is read until a batch needs it)
  synthetic shard one shard of --mb MB (default 1000) of random ids below 1024 in a temp folder,
                  skipped when the temp folder's disk has less than 3× that free: read_shard
                  (into memory) and load_shard (memory map) with no checks, sha256 only, ids only
                  and both; the memory-map rows include reading every token once afterwards (what
                  training does), since an unchecked map reads nothing by itself; then the same
                  tokens as 8 shards, opened as a split (Split.load_tokens and TokenStream check up
                  to 8 shards at once on threads: sha256 runs at one core's speed per shard)
  model file      --model-mb MB (default 256) of fp32 tensors: load_weights with the payload_sha256
                  field and without it (a file of an older golfctl: only the file's own sha256)

Timings are the best of --repeats 3 with the file in the page cache: the cost of the checks
themselves. With --cold the synthetic shard is also read once after dropping its pages from the
cache (posix_fadvise DONTNEED, Linux), so the read comes from disk; on a virtual machine whose host
caches the disk these rows are noisy (one run each, the host's cache still warm).

    .venv/bin/python benchmarks/bench_verify.py [--data DIR] [--mb 1000] [--model-mb 256] [--repeats 3] [--cold]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from golfctl.checkpoint import read_metadata
from golfctl.config import TrainConfig, config_from_dict
from golfctl.dataset import Shard, Split, open_dataset
from golfctl.fileio import atomic_write_bytes, sha256_file
from golfctl.loader import TokenStream
from golfctl.safetensors_io import PAYLOAD_SHA256, serialize
from golfctl.shards import ShardWriter, load_shard, read_shard
from golfctl.weights import Weights, load_weights, save_model_file

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 1024
READ_BLOCK = 1 << 22


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "artifacts" / "data", help="dataset folder (default "
                        "artifacts/data; built from the Shakespeare demo in a temp folder when absent)")
    parser.add_argument("--mb", type=float, default=1000.0, help="synthetic shard size in MB (default 1000; 0 skips)")
    parser.add_argument("--model-mb", type=float, default=256.0, help="model file size in MB (default 256; 0 skips)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also time the synthetic shard read from disk")
    args = parser.parse_args()
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="bench_verify.") as tmp_name:
        tmp = Path(tmp_name)
        demo(args.data if args.data.is_dir() else build_demo(tmp / "data"), args.repeats)
        if args.mb > 0:
            synthetic(tmp, int(args.mb * 1e6), args.repeats, args.cold)
        if args.model_mb > 0:
            model_file(tmp, int(args.model_mb * 1e6), args.repeats)
    return 0


def build_demo(out: Path) -> Path:
    from stages.tokenize import TokenizeConfig, run_tokenize

    print(f"demo dataset: tokenizing the Shakespeare demo into {out} (untimed)")
    run_tokenize(TokenizeConfig(out=out))
    return out


def best(fn: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def row(label: str, seconds: float, nbytes: int, reference: float | None = None) -> None:
    ratio = f"  ×{seconds / reference:6.2f}" if reference else ""
    print(f"  {label:<44} {seconds * 1e3:10.2f} ms  {nbytes / seconds / 1e6 if seconds else float('inf'):9.0f} MB/s"
          f"{ratio}")


def drop_cache(*paths: Path) -> Callable[[], None]:
    def drop() -> None:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return drop


BUFFER = np.empty(READ_BLOCK, dtype=np.uint16)


def read_all(tokens: np.ndarray) -> None:
    """Copy every token once, block by block, as training eventually reads them."""
    for start in range(0, tokens.size, READ_BLOCK):
        np.copyto(BUFFER[:min(READ_BLOCK, tokens.size - start)], tokens[start:start + READ_BLOCK])


def demo(folder: Path, repeats: int) -> None:
    dataset = open_dataset(folder)
    vocab = dataset.vocab_size
    for name in ("val", "train"):
        split = dataset.splits[name]
        bare = dataclasses.replace(split, vocab_size=None, verify=False)  # nothing to check
        ids_only = dataclasses.replace(split, verify=False)  # open_dataset(..., verify=False)
        nbytes = sum(s.path.stat().st_size for s in split.shards)
        print(f"demo {folder} {name}: {len(split.shards)} shard(s), {split.tokens:,} tokens, {nbytes / 1e6:.1f} MB, "
              f"vocab {vocab}, checksums {'yes' if split.shards and split.shards[0].sha256 else 'none'}")
        if name == "val":
            before = best(lambda: np.concatenate([load_shard(s.path) for s in split.shards]), repeats)
            none = best(lambda: bare.load_tokens(), repeats)
            ids = best(lambda: ids_only.load_tokens(vocab), repeats)
            full = best(lambda: split.load_tokens(vocab), repeats)
            row("load_tokens before this change (concatenate)", before, nbytes)
            row("load_tokens, no checks", none, nbytes)
            row("load_tokens, ids only (verify=False)", ids, nbytes, none)
            row("load_tokens, sha256 + ids", full, nbytes, none)
        else:
            opened = best(lambda: TokenStream(bare), repeats)
            used = best(lambda: [read_all(t) for t in TokenStream(bare).shards], repeats)
            full = best(lambda: TokenStream(split), repeats)
            full_used = best(lambda: [read_all(t) for t in TokenStream(split).shards], repeats)
            row("TokenStream open, no checks (reads nothing)", opened, nbytes)
            row("TokenStream open, sha256 + ids", full, nbytes)
            row("open + read every token, no checks", used, nbytes)
            row("open + read every token, sha256 + ids", full_used, nbytes, used)


def synthetic(tmp: Path, target: int, repeats: int, cold: bool) -> None:
    free = shutil.disk_usage(tmp).free
    if free < 3 * target:
        print(f"synthetic shard: skipped, {free / 1e9:.1f} GB free in {tmp} (needs {3 * target / 1e9:.1f})")
        return
    tokens = target // 2
    (tmp / "many").mkdir()
    writer, many = ShardWriter(tmp, "train", tokens), ShardWriter(tmp / "many", "train", -(-tokens // 8))
    rng = np.random.default_rng(0)
    for start in range(0, tokens, 1 << 24):
        block = rng.integers(0, VOCAB, size=min(1 << 24, tokens - start), dtype=np.uint16)
        writer.append(block)
        many.append(block)
    record = writer.close()[0]
    split = Split("train", tuple(Shard(tmp / "many" / r.file, r.tokens, r.sha256) for r in many.close()), None, None,
                  VOCAB)
    path = tmp / record.file
    nbytes = path.stat().st_size
    print(f"synthetic shard: {tokens:,} tokens, {nbytes / 1e6:.0f} MB, ids < {VOCAB}")
    out = np.empty(tokens, dtype=np.uint16)
    sha = record.sha256
    variants = (("no checks", None, None), ("sha256 only", sha, None), ("ids only", None, VOCAB),
                ("sha256 + ids", sha, VOCAB))
    for cache in ("warm", "cold") if cold else ("warm",):
        before = drop_cache(path) if cache == "cold" else None
        reps = repeats if cache == "warm" else 1
        print(f"  -- {cache} page cache")
        reference = None
        for label, s, v in variants:
            t = best(lambda: read_shard(path, out, s, v), reps, before)
            reference = reference or t
            row(f"read_shard, {label}", t, nbytes, reference)
        reference = None
        for label, s, v in variants:
            t = best(lambda: read_all(load_shard(path, s, v)), reps, before)
            reference = reference or t
            row(f"load_shard + read every token, {label}", t, nbytes, reference)
        t = best(lambda: sha256_file(path), reps, before)
        row("sha256_file alone (fileio, 1 MiB reads)", t, nbytes)
    bare = dataclasses.replace(split, vocab_size=None, verify=False)
    print(f"  -- the same tokens in {len(split.shards)} shards, warm page cache, up to "
          f"{min(len(split.shards), 8, os.cpu_count() or 1)} threads")
    none = best(lambda: bare.load_tokens(), repeats)
    full = best(lambda: split.load_tokens(), repeats)
    row("Split.load_tokens, no checks", none, nbytes)
    row("Split.load_tokens, sha256 + ids", full, nbytes, none)
    none = best(lambda: [read_all(t) for t in TokenStream(bare).shards], repeats)
    full = best(lambda: [read_all(t) for t in TokenStream(split).shards], repeats)
    row("TokenStream + read every token, no checks", none, nbytes)
    row("TokenStream + read every token, sha256 + ids", full, nbytes, none)


def model_file(tmp: Path, target: int, repeats: int) -> None:
    config = config_from_dict(TrainConfig, {"vocab_size": VOCAB, "model_dim": 16, "num_layers": 1, "num_heads": 2,
                                            "num_kv_heads": 1, "compile": False})
    rows = max(1, target // 4 // 4096)
    state = {f"t{i}": torch.randn(rows // 8 or 1, 4096) for i in range(8)}
    weights = Weights(config, state, "ema", "bench", "0" * 64)
    new, old = tmp / "new.safetensors", tmp / "old.safetensors"
    save_model_file(new, weights, provenance={})
    meta = read_metadata(new)
    del meta[PAYLOAD_SHA256]
    atomic_write_bytes(old, serialize(state, meta))
    nbytes = new.stat().st_size
    print(f"model file: {nbytes / 1e6:.0f} MB of fp32 tensors (load_weights reads them with safetensors and "
          "hashes the file for Weights.sha256)")
    # load_weights never builds the model: that its config does not fit these tensors goes unnoticed here
    without = best(lambda: load_weights(old), repeats)
    with_ = best(lambda: load_weights(new), repeats)
    row("load_weights, no payload_sha256 (older file)", without, nbytes)
    row("load_weights, payload_sha256 checked", with_, nbytes, without)


if __name__ == "__main__":
    sys.exit(main())
