"""Training checkpoints: `RUNDIR/ckpt.safetensors`, everything `--resume` needs, no pickle.

Layout (safetensors: an 8-byte header length, a JSON header, then raw tensor bytes):

    tensors   model.<name>   fp32 weights
              ema.<name>     fp32 EMA shadow of every weight
              optim.<…>      optimizer state (see golfctl.optim)
              rng.torch      torch CPU generator state (uint8)
    metadata  format="golfctl.checkpoint", version="1", and JSON strings: config (resolved),
              step, elapsed_seconds (training time so far), loader (its state), dataset
              (manifest sha256 or shard fingerprint), provenance, payload_sha256 (of the tensor
              bytes, checked on load; absent in files of older golfctl) and, when the trainer
              gives it, tokenizer_sha256 (of the tokenizer the run was trained with)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from golfctl.config import stored_config
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes
from golfctl.safetensors_io import PAYLOAD_SHA256, digest_file, serialize

CHECKPOINT_FORMAT = "golfctl.checkpoint"
CHECKPOINT_VERSION = 1
_SECTIONS = ("model", "ema", "optim", "rng")


@dataclass
class Checkpoint:
    config: dict
    step: int
    elapsed_seconds: float
    loader: dict
    dataset: str
    provenance: dict
    tensors: dict[str, dict[str, torch.Tensor]]  # section ("model", "ema", "optim", "rng") → name → tensor
    tokenizer_sha256: str | None = None  # of the tokenizer trained with (None: not recorded, older files)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    flat = {f"{section}.{name}": t.detach().cpu().contiguous()
            for section, tensors in ckpt.tensors.items() for name, t in tensors.items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "config": json.dumps(ckpt.config, sort_keys=True),
        "step": str(ckpt.step),
        "elapsed_seconds": repr(ckpt.elapsed_seconds),
        "loader": json.dumps(ckpt.loader, sort_keys=True),
        "dataset": ckpt.dataset,
        "provenance": json.dumps(ckpt.provenance, sort_keys=True),
    }
    if ckpt.tokenizer_sha256 is not None:
        metadata["tokenizer_sha256"] = ckpt.tokenizer_sha256
    atomic_write_bytes(path, serialize(flat, metadata, checksum=True))


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of any golfctl weights file, with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc})") from None


def check_payload(path: Path, meta: dict[str, str], remedy: str, file_sha256: bool = False) -> str | None:
    """Refuse a file whose tensor bytes do not hash to the `payload_sha256` its metadata records (a file
    without one, from an older golfctl, passes). With `file_sha256`, return the whole file's sha256,
    computed in the same read."""
    recorded = meta.get(PAYLOAD_SHA256)
    digest = digest_file(path, whole=file_sha256, payload=recorded is not None)
    if recorded is not None and digest.payload_sha256 != recorded:
        raise UserError(f"{path} is corrupt: payload checksum mismatch (its tensor bytes changed after it was "
                        f"written); {remedy}")
    return digest.file_sha256


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a training checkpoint (format {meta.get('format')!r}); "
                        f"pass the ckpt.safetensors written by `golfctl train`")
    if meta.get("version") != str(CHECKPOINT_VERSION):
        raise UserError(f"{path} is checkpoint version {meta.get('version')}; this golfctl reads version "
                        f"{CHECKPOINT_VERSION}")
    check_payload(path, meta, "re-run `golfctl train`, or resume from an intact copy of the checkpoint")
    tensors: dict[str, dict[str, torch.Tensor]] = {s: {} for s in _SECTIONS}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                section, _, name = key.partition(".")
                if section not in tensors:
                    raise UserError(f"{path} holds an unexpected tensor {key!r}")
                tensors[section][name] = f.get_tensor(key)
        return Checkpoint(
            config=stored_config(json.loads(meta["config"])),
            step=int(meta["step"]),
            elapsed_seconds=float(meta["elapsed_seconds"]),
            loader=json.loads(meta["loader"]),
            dataset=meta["dataset"],
            provenance=json.loads(meta["provenance"]),
            tensors=tensors,
            tokenizer_sha256=meta.get("tokenizer_sha256"),
        )
    except (SafetensorError, KeyError, ValueError) as exc:
        raise UserError(f"{path} is a damaged checkpoint ({exc}); resume from an earlier copy or retrain") from None
