"""Benchmark: golfctl's artifact against the records' ways of storing the same quantized model.

    .venv/bin/python benchmarks/bench_codec.py [--artifact artifacts/artifact.bin] [--timing-values 36000000]

The artifact is decoded into its integers, fp16 row scales and fp16 passthrough tensors, and
the same content is stored each way; every figure is whole bytes of what would be shipped:

- golfctl: the artifact file as given (prefix, zstd JSON header, coded payload);
- golfctl (this version): the same tensors re-encoded by this golfctl with --codec auto (the
  smallest codec per tensor), so an artifact written by an older golfctl shows what it would
  be now. It must decode to the same dequantized state, bit for bit;
- order-0 bound: Σ n·H(q) over the integer tensors, each under its own order-0 model, plus the
  fp16 scales and tensors at 2 bytes a value (no header): the bound golfctl's codec approaches;
- 04-09 (brotli): the 2026-04-09 record's method: `torch.save({"w": …, "m": …})` of int8
  tensors `name.q`, fp16 `name.scale` and fp16 passthrough tensors, byte-shuffled with stride
  2, then brotli quality 11;
- lzma: the same torch.save bytes, byte-shuffled, lzma preset 9e;
- 04-27 (lrzip): the same bytes through `lrzip -z` (ZPAQ) when an lrzip binary is on PATH,
  otherwise reported as skipped. (The 04-27 record also reorders rows and groups tensors
  first; this measures the compressor on the 04-09 layout.)

Each row shows bytes and the ratio to golfctl's (this version); ratios above 1 lose to it. A
second table splits golfctl (this version) by part (integers, scales, fp16 tensors, header and
prefix) next to brotli on each part's raw bytes alone (byte-shuffled, no pickle around them).

Timing (--timing-values N, 0 to skip): N random int6 integers shaped like the record preset's
block matrices plus its int8 embedding, each row round(N(0, 2.4)) clipped to ±31 (the spread
of SDClip k = 12.85 integers; the embedding's rows N(0, 6)), with fp16 scales; encode and decode
seconds of the whole artifact with --codec auto, checked bit-exact.
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from golfctl.artifact import (AUTO, LQER_SUFFIX, PREFIX_BYTES, Float16Tensor, QuantizedTensor, decode_artifact,
                              dequantized_state, encode_artifact, read_artifact)
from golfctl.codec import entropy_bound_bytes
from golfctl.config import TrainConfig, resolve_config
from golfctl.model import GPT, parameter_roles

SHUFFLE_MAGIC = b"BSHF"  # the records' byte-shuffle header: magic, stride, then the shuffled bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/artifact.bin"))
    parser.add_argument("--timing-values", type=int, default=36_000_000,
                        help="integers in the timing artifact (record scale: about 36M); 0 skips it")
    args = parser.parse_args()
    artifact = read_artifact(args.artifact)
    current = reencode(artifact)
    ours = len(current)
    saved = record_layout_bytes(artifact)
    shuffled = byte_shuffle(saved)
    brotli = brotli_bytes(shuffled)
    rows = [(f"golfctl (file, v{artifact.version})", args.artifact.stat().st_size),
            ("golfctl (this version)", ours), ("order-0 bound", order0_bytes(artifact)),
            ("04-09 (brotli)", brotli),
            ("lzma", len(lzma.compress(shuffled, preset=9 | lzma.PRESET_EXTREME))),
            ("04-27 (lrzip)", lrzip_bytes(shuffled))]
    print(f"bench_codec: {args.artifact} (codec {artifact.codec}, {len(artifact.tensors)} tensors, "
          f"{sum(t.q.size for t in artifact.tensors.values() if isinstance(t, QuantizedTensor)):,} integers); "
          f"torch.save layout {len(saved):,} bytes")
    for name, size in rows:
        if size is None:
            print(f"  {name:<24} skipped (no lrzip on PATH)")
        else:
            print(f"  {name:<24}{size:>12,} bytes  {size / ours:6.3f}× golfctl")
    print(f"  golfctl is {1 - ours / brotli:.2%} smaller than the 04-09 method")
    print_parts(decode_artifact(current, "re-encoded"), artifact)
    if args.timing_values:
        print_timing(args.timing_values)
    return 0


def reencode(artifact) -> bytes:
    data = encode_artifact([*artifact.tensors.values(), *artifact.corrections.values()], AUTO, artifact.config,
                           artifact.source, artifact.meta)
    before, after = dequantized_state(artifact), dequantized_state(decode_artifact(data, "re-encoded"))
    if before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
        raise SystemExit("bench_codec: the re-encoded artifact does not dequantize to the same state")
    return data


def print_parts(ours, artifact) -> None:
    """Bytes by part: golfctl (this version) against brotli on each part alone."""
    ints = {n for n, t in artifact.tensors.items() if isinstance(t, QuantizedTensor)}
    fp16 = set(artifact.tensors) - ints
    factors = [f for c in artifact.corrections.values() for f in (c.a, c.b)]
    parts = {"integers": sum(ours.stored[n].data_bytes for n in ints),
             "scales": sum(ours.stored[n].scale_bytes for n in ints),
             "fp16 tensors": sum(ours.stored[n].data_bytes for n in fp16),
             "LQER factors": sum(ours.stored[n + LQER_SUFFIX].total_bytes for n in artifact.corrections)}
    parts["header+prefix"] = PREFIX_BYTES + ours.header_bytes
    raw = {"integers": b"".join(artifact.tensors[n].q.tobytes() for n in ints),
           "scales": b"".join(artifact.tensors[n].scales.tobytes() for n in ints),
           "fp16 tensors": b"".join(np.asarray(artifact.tensors[n].values).tobytes() for n in fp16),
           "LQER factors": b"".join(f.q.tobytes() + f.scales.tobytes() for f in factors)}
    if not factors:
        del parts["LQER factors"], raw["LQER factors"]
    print("  by part (brotli: byte-shuffle + brotli-11 of the part's raw bytes, no pickle around them)")
    print(f"  {'part':<16}{'golfctl':>12}{'brotli':>12}")
    for part, size in parts.items():
        other = f"{brotli_bytes(byte_shuffle(raw[part])):,}" if part in raw else "—"
        print(f"  {part:<16}{size:>12,}{other:>12}")

def print_timing(values: int) -> None:
    tensors = record_like_tensors(values)
    count = sum(t.q.size for t in tensors if isinstance(t, QuantizedTensor))
    start = time.perf_counter()
    data = encode_artifact(tensors, AUTO, {}, {}, {})
    encoded = time.perf_counter()
    back = decode_artifact(data, "timing")
    decoded = time.perf_counter()
    if not all(np.array_equal(back.tensors[t.name].q, t.q) for t in tensors if isinstance(t, QuantizedTensor)):
        raise SystemExit("bench_codec: the timing artifact does not round-trip")
    bound = sum(entropy_bound_bytes(t.q) for t in tensors if isinstance(t, QuantizedTensor))
    print(f"timing: {count:,} integers in {len(tensors)} record-shaped tensors: artifact {len(data):,} bytes "
          f"({len(data) / bound:.4f}× the integers' order-0 bound); encode {encoded - start:.1f} s "
          f"({count / (encoded - start) / 1e6:.1f} M/s), decode {decoded - encoded:.1f} s "
          f"({count / (decoded - encoded) / 1e6:.1f} M/s)")


def record_like_tensors(values: int) -> list:
    """Random integers in the record preset's quantized shapes, repeated or cut to about `values`."""
    cfg = resolve_config(TrainConfig, preset="record")
    with torch.device("meta"):
        model = GPT(cfg)
    roles = parameter_roles(model)
    shapes = [(n, tuple(p.shape), roles[n].name == "embed") for n, p in model.named_parameters() if roles[n].quantized]
    rng = np.random.default_rng(0)
    tensors, total = [], 0
    while total < values:
        for name, shape, embed in shapes:
            if total >= values:
                break
            rows = shape[0]
            cols = int(np.prod(shape)) // rows
            std, limit = (6.0, 127) if embed else (2.4, 31)
            q = np.clip(np.round(rng.standard_normal((rows, cols)) * std), -limit, limit).astype(np.int8)
            scales = (0.01 * (1 + 0.2 * rng.random(rows))).astype(np.float16)
            tensors.append(QuantizedTensor(f"{name}.{len(tensors)}", shape, 8 if embed else 6, q, scales))
            total += q.size
    tensors.append(Float16Tensor("norm", (512,), np.ones(512, np.float16)))
    return tensors


def torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def record_layout_bytes(artifact) -> bytes:
    """torch.save of the content in the 04-09 record's layout (int8 .q, fp16 .scale, fp16 tensors)."""
    weights, meta = {}, {}
    for name, tensor in artifact.tensors.items():
        if isinstance(tensor, QuantizedTensor):
            weights[f"{name}.q"] = torch.from_numpy(tensor.q.astype(np.int8).reshape(tensor.shape))
            weights[f"{name}.scale"] = torch.from_numpy(tensor.scales.astype(np.float16))
            meta[name] = f"gptq (int{tensor.bits})"
        else:
            weights[name] = torch.from_numpy(np.asarray(tensor.values, dtype=np.float16).reshape(tensor.shape))
            meta[name] = "passthrough (float16)"
    for name, correction in artifact.corrections.items():  # the 04-27 record keeps LQER's A and B the same way
        for part, factor in (("lqer_a", correction.a), ("lqer_b", correction.b)):
            weights[f"{name}.{part}.q"] = torch.from_numpy(factor.q.astype(np.int8))
            weights[f"{name}.{part}.scale"] = torch.from_numpy(factor.scales.astype(np.float16))
        meta[name] = f"gptq (int{artifact.tensors[name].bits}) + lqer"
    return torch_save({"w": weights, "m": meta})


def byte_shuffle(data: bytes, stride: int = 2) -> bytes:
    """Every stride-th byte together (all low bytes, then all high bytes of 2-byte values)."""
    src = np.frombuffer(data, dtype=np.uint8)
    return SHUFFLE_MAGIC + bytes([stride]) + b"".join(src[i::stride].tobytes() for i in range(stride))


def order0_bytes(artifact) -> int:
    total = 0.0
    for tensor in artifact.tensors.values():
        if isinstance(tensor, QuantizedTensor):
            total += entropy_bound_bytes(tensor.q) + 2 * tensor.scales.size
        else:
            total += 2 * int(np.prod(tensor.shape))
    for correction in artifact.corrections.values():
        total += sum(entropy_bound_bytes(f.q) + 2 * f.scales.size for f in (correction.a, correction.b))
    return int(np.ceil(total))


def brotli_bytes(data: bytes) -> int:
    import brotli  # the dev extra installs it; only this benchmark needs it

    return len(brotli.compress(data, quality=11))


def lrzip_bytes(data: bytes) -> int | None:
    if shutil.which("lrzip") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "model.bin"
        source.write_bytes(data)
        subprocess.run(["lrzip", "-z", "-q", str(source)], check=True)
        return (Path(tmp) / "model.bin.lrz").stat().st_size


if __name__ == "__main__":
    sys.exit(main())
