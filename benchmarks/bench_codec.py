"""Benchmark: golfctl's artifact against the records' ways of storing the same quantized model.

    .venv/bin/python benchmarks/bench_codec.py [--artifact artifacts/artifact.bin]

The artifact is decoded into its integers, fp16 row scales and fp16 passthrough tensors, and
the same content is stored each way; every figure is whole bytes of what would be shipped:

- golfctl: the artifact file as written (prefix, zstd JSON header, coded payload);
- order-0 bound: Σ n·H(q) over the integer tensors, each under its own order-0 model, plus the
  fp16 scales and tensors at 2 bytes a value (no header): the bound golfctl's codec approaches;
- 04-09 (brotli): the 2026-04-09 record's method: `torch.save({"w": …, "m": …})` of int8
  tensors `name.q`, fp16 `name.scale` and fp16 passthrough tensors, byte-shuffled with stride
  2, then brotli quality 11;
- lzma: the same torch.save bytes, byte-shuffled, lzma preset 9e;
- 04-27 (lrzip): the same bytes through `lrzip -z` (ZPAQ) when an lrzip binary is on PATH,
  otherwise reported as skipped. (The 04-27 record also reorders rows and groups tensors
  first; this measures the compressor on the 04-09 layout.)

Each row shows bytes and the ratio to golfctl's; ratios below 1 beat golfctl.
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from golfctl.artifact import QuantizedTensor, read_artifact
from golfctl.codec import entropy_bound_bytes

SHUFFLE_MAGIC = b"BSHF"  # the records' byte-shuffle header: magic, stride, then the shuffled bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/artifact.bin"))
    args = parser.parse_args()
    artifact = read_artifact(args.artifact)
    golfctl_bytes = args.artifact.stat().st_size
    saved = record_layout_bytes(artifact)
    shuffled = byte_shuffle(saved)
    rows = [("golfctl", golfctl_bytes), ("order-0 bound", order0_bytes(artifact)),
            ("04-09 (brotli)", brotli_bytes(shuffled)),
            ("lzma", len(lzma.compress(shuffled, preset=9 | lzma.PRESET_EXTREME))),
            ("04-27 (lrzip)", lrzip_bytes(shuffled))]
    print(f"bench_codec: {args.artifact} (codec {artifact.codec}, {len(artifact.tensors)} tensors, "
          f"{sum(t.q.size for t in artifact.tensors.values() if isinstance(t, QuantizedTensor)):,} integers); "
          f"torch.save layout {len(saved):,} bytes")
    for name, size in rows:
        if size is None:
            print(f"  {name:<16} skipped (no lrzip on PATH)")
        else:
            print(f"  {name:<16}{size:>12,} bytes  {size / golfctl_bytes:6.3f}× golfctl")
    return 0


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
    buffer = io.BytesIO()
    torch.save({"w": weights, "m": meta}, buffer)
    return buffer.getvalue()


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
