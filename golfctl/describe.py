"""`golfctl inspect`: recognise any golfctl file kind, print what it holds, check sizes and checksums."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from golfctl.artifact import FORMAT as ARTIFACT_FORMAT
from golfctl.artifact import LQER_SUFFIX, QuantizedTensor, read_artifact
from golfctl.budget import budget_for, chain_settings
from golfctl.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, read_metadata
from golfctl.dataset import MANIFEST_NAME, Dataset, checksum_mismatches, open_dataset
from golfctl.errors import UserError
from golfctl.outputs import ARTIFACT, CHECKPOINT, MODEL, SAFETENSORS, SHARD, TOKENIZER, sniff_kind
from golfctl.shards import load_shard
from golfctl.tokenizer import check_shard_tokenizer, load_tokenizer
from golfctl.weights import MODEL_FORMAT, MODEL_VERSION, load_weights


def describe(path: str | Path) -> list[str]:
    """Lines describing `path`; raises UserError if it is unknown, corrupt or fails a check."""
    path = Path(path)
    if path.is_dir():
        return describe_dataset(open_dataset(path))
    if path.name == MANIFEST_NAME:
        return describe_dataset(open_dataset(path.parent))
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    describers = {SHARD: describe_shard, ARTIFACT: describe_artifact, TOKENIZER: describe_tokenizer,
                  CHECKPOINT: describe_weights, MODEL: describe_weights, SAFETENSORS: describe_weights}
    kind = sniff_kind(path)
    if kind in describers:
        return describers[kind](path)
    raise UserError(f"{path} is not a file kind golfctl knows (dataset folder, shard, tokenizer model, checkpoint, model file, quantized artifact)")


def describe_shard(path: Path) -> list[str]:
    tokens = load_shard(path)
    lines = [f"{path}: token shard (magic 20240520, version 1)", f"  tokens      {tokens.size:,}"]
    if tokens.size:
        lines.append(f"  documents   {int(np.count_nonzero(tokens == 1)):,} (BOS tokens)")
        lines.append(f"  max id      {int(tokens.max())}")
    return lines


def describe_tokenizer(path: Path) -> list[str]:
    sp = load_tokenizer(path)
    check_shard_tokenizer(sp, str(path))
    n_bytes = sum(sp.is_byte(i) for i in range(sp.vocab_size()))
    return [f"{path}: SentencePiece tokenizer", f"  vocab       {sp.vocab_size():,} ({n_bytes} byte-fallback pieces)",
            f"  bos/eos/unk {sp.bos_id()}/{sp.eos_id()}/{sp.unk_id()}"]


def describe_dataset(ds: Dataset) -> list[str]:
    m = ds.manifest
    if m is None:
        lines = [f"{ds.root}: dataset folder without manifest (official challenge layout)",
                 "  tokenizer   not included: pass the challenge's .model file where a stage asks for it"]
    else:
        tok = m["tokenizer"]
        lines = [f"{ds.root}: dataset ({m['format']} v{m['version']})",
                 f"  source      {m['source']['kind']}: {m['source']['name']}, {m['source']['documents']:,} documents",
                 f"  tokenizer   {tok['file']}  vocab {tok['vocab_size']:,}  sha256 {tok['sha256'][:16]}…"]
    for split in ds.splits.values():
        docs = "?" if split.docs is None else f"{split.docs:,}"
        n_bytes = "" if split.bytes is None else f"  {split.bytes:,} bytes"
        lines.append(f"  {split.name:<5}       {docs} docs  {split.tokens:,} tokens{n_bytes}  {len(split.shards)} shard(s)")
        lines.extend(f"    {s.path.name}  {s.tokens:,} tokens" for s in split.shards)
    problems = checksum_mismatches(ds)
    if problems:
        raise UserError(f"{ds.root} failed its checksums: " + "; ".join(problems) + "; re-create it with `golfctl tokenize`")
    checked = sum(s.sha256 is not None for split in ds.splits.values() for s in split.shards)
    lines.append(f"  checks      sizes ok; {checked} shard checksum(s) ok" if m else "  checks      sizes ok (no checksums published)")
    return lines


def describe_weights(path: Path) -> list[str]:
    meta = read_metadata(path)
    kind = meta.get("format")
    if kind == MODEL_FORMAT:
        weights = load_weights(path)  # reads every tensor: sizes are checked
        return [f"{path}: model ({MODEL_FORMAT} v{MODEL_VERSION}), {weights.kind} weights",
                _model_line(dataclasses.asdict(weights.config)),
                f"  values      {sum(t.numel() for t in weights.state.values()):,} in {len(weights.state)} tensors",
                f"  source      {meta.get('source')}",
                _provenance_line(json.loads(meta.get("provenance", "{}")))]
    if kind != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is a safetensors file of unknown kind {kind!r}")
    ckpt = load_checkpoint(path)  # reads every tensor: sizes are checked
    cfg = ckpt.config
    lines = [f"{path}: training checkpoint ({CHECKPOINT_FORMAT} v1)",
             f"  step        {ckpt.step:,} of {cfg['iterations']:,}  ({ckpt.elapsed_seconds:,.1f} s trained)",
             _model_line(cfg),
             f"  dataset     {ckpt.dataset}",
             _provenance_line(ckpt.provenance)]
    for section, tensors in ckpt.tensors.items():
        count = sum(t.numel() for t in tensors.values())
        lines.append(f"  {section:<11} {len(tensors)} tensors, {count:,} values")
    return lines


def _model_line(cfg: dict) -> str:
    return (f"  model       {cfg['num_layers']} layers × {cfg['model_dim']}, {cfg['num_heads']}/{cfg['num_kv_heads']} heads, "
            f"vocab {cfg['vocab_size']}, loops {cfg['num_loops']} (eval {cfg['eval_loops'] or cfg['num_loops']})")


def _provenance_line(prov: dict) -> str:
    return "  provenance  " + ", ".join(f"{k} {v}" for k, v in prov.items())


def describe_artifact(path: Path) -> list[str]:
    artifact = read_artifact(path)  # validates every length, offset, shape and the checksum
    meta = artifact.meta
    lines = [f"{path}: quantized artifact ({ARTIFACT_FORMAT} v{artifact.version}), codec {artifact.codec}",
             _model_line(artifact.config),
             "  quantizer   " + ", ".join(f"{k} {v}" for k, v in sorted(meta.items())),
             "  source      " + ", ".join(f"{k} {v}" for k, v in sorted(artifact.source.items())),
             f"  header      {artifact.header_bytes:,} bytes (zstd JSON); payload {artifact.payload_bytes:,} bytes",
             f"  {'tensor':<34}{'shape':>14}{'kind':>7}{'bytes':>10}  codec (values+scales)"]
    for name, tensor in artifact.tensors.items():
        kind = f"int{tensor.bits}" if isinstance(tensor, QuantizedTensor) else "fp16"
        shape = "×".join(map(str, tensor.shape)) or "scalar"
        stored = artifact.stored[name]
        lines.append(f"  {name:<34}{shape:>14}{kind:>7}{stored.total_bytes:>10,}  {stored.describe()}")
    for name, correction in artifact.corrections.items():  # LQER: A (rows, rank) · B (rank, cols) added to NAME
        stored = artifact.stored[name + LQER_SUFFIX]
        kind = f"{correction.a.bits}/{correction.b.bits}"
        lines.append(f"  {name + LQER_SUFFIX:<34}{'rank ' + str(correction.a.q.shape[1]):>14}{kind:>7}"
                     f"{stored.total_bytes:>10,}  {stored.describe()}")
    lines.append("  budget")
    lines += budget_for(path.stat().st_size, chain_settings(artifact.config, {**meta, "codec": artifact.codec})).table()
    return lines
