"""Model files (`final.safetensors`): plain fp32 weights that describe themselves, no pickle.

Layout: a safetensors file whose tensors are the model's state dict (`tok_emb.weight`,
`blocks.0.attn.c_q.weight`, …) and whose metadata holds format="golfctl.model",
version="1", config (resolved, JSON), weights ("ema" or "raw"), source (the identity of the
checkpoint weights it came from, `weights_sha256`), provenance (JSON), payload_sha256 (of the
tensor bytes: a mismatch on load is refused; files of older golfctl have none) and, when the
checkpoint recorded it, tokenizer_sha256 (of the tokenizer the weights were trained with).

`load_weights` also accepts a training checkpoint (its EMA weights, or raw ones on request),
so every later stage takes either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from golfctl.artifact import MAGIC, dequantized_state, read_artifact
from golfctl.checkpoint import CHECKPOINT_FORMAT, check_payload, load_checkpoint, read_metadata
from golfctl.config import TrainConfig, config_from_dict, stored_config
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes, sha256_file
from golfctl.model import GPT
from golfctl.safetensors_io import serialize

MODEL_FORMAT = "golfctl.model"
MODEL_VERSION = 1


@dataclass
class Weights:
    config: TrainConfig
    state: dict[str, torch.Tensor]
    kind: str  # "ema" or "raw"
    origin: str  # what they were read from, for messages: "model file", "checkpoint EMA", …
    # of the file they were read from, or for a checkpoint `weights_sha256` (provenance of whatever
    # is made from them)
    sha256: str
    # of the tokenizer they were trained with, as the checkpoint or model file records it; None when it
    # records none (older files, quantized artifacts): validation.check_model_tokenizer then checks nothing
    tokenizer_sha256: str | None = None


def save_model_file(path: Path, weights: Weights, provenance: dict) -> None:
    metadata = {
        "format": MODEL_FORMAT,
        "version": str(MODEL_VERSION),
        "config": json.dumps(dataclasses.asdict(weights.config), sort_keys=True),
        "weights": weights.kind,
        "source": weights.sha256,
        "provenance": json.dumps(provenance, sort_keys=True),
    }
    if weights.tokenizer_sha256 is not None:
        metadata["tokenizer_sha256"] = weights.tokenizer_sha256
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in weights.state.items()}
    atomic_write_bytes(path, serialize(tensors, metadata, checksum=True))


def load_weights(path: Path, raw: bool = False) -> Weights:
    """Weights from a model file, a quantized artifact (dequantized), or a checkpoint's EMA (or,
    with `raw`, its raw) weights."""
    path = Path(path)
    if _is_artifact(path):
        artifact = read_artifact(path)
        return Weights(_config(artifact.config, path), dequantized_state(artifact), "quantized",
                       "quantized artifact (dequantized)", sha256_file(path))
    meta = read_metadata(path)
    kind = meta.get("format")
    if kind == CHECKPOINT_FORMAT:
        ckpt = load_checkpoint(path)
        section = "model" if raw else "ema"
        config = _config(ckpt.config, path)
        return Weights(config, ckpt.tensors[section], "raw" if raw else "ema",
                       f"checkpoint {'raw' if raw else 'EMA'} weights", weights_sha256(config, ckpt.tensors[section]),
                       ckpt.tokenizer_sha256)
    if kind != MODEL_FORMAT:
        raise UserError(f"{path} is neither a golfctl model file nor a checkpoint (format {kind!r})")
    if meta.get("version") != str(MODEL_VERSION):
        raise UserError(f"{path} is model format version {meta.get('version')}; this golfctl reads {MODEL_VERSION}")
    file_sha256 = check_payload(path, meta, "re-run `golfctl ema-finalize` on the run's checkpoint to write it again",
                                file_sha256=True)
    try:
        config = _config(json.loads(meta["config"]), path)
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, KeyError, ValueError) as exc:
        raise UserError(f"{path} is a damaged model file ({exc})") from None
    return Weights(config, state, meta.get("weights", "?"), "model file", file_sha256, meta.get("tokenizer_sha256"))


def weights_sha256(config: TrainConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 of a config and its weights, not of the checkpoint file: that file also records the
    wall-clock seconds trained, so two runs that train the same weights (say golfctl's chain and
    the exported train_gpt.py) would otherwise write different model files and artifacts."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _is_artifact(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _config(values: dict, path: Path) -> TrainConfig:
    try:
        return config_from_dict(TrainConfig, stored_config(values))
    except UserError as exc:
        raise UserError(f"{path} records a config this golfctl cannot use ({exc})") from None


def build_model(weights: Weights, device: torch.device) -> GPT:
    """The GPT the weights belong to, in eval mode on `device`."""
    model = GPT(weights.config.model_config())
    try:
        model.load_state_dict(weights.state)
    except RuntimeError as exc:
        raise UserError(f"the {weights.origin} do not fit the model their config describes ({exc})") from None
    return model.to(device).eval()


def refuse_non_finite(weights: Weights) -> None:
    """Quantizing or scoring NaN or inf weights only hides the damage: refuse them by name."""
    bad = [name for name, t in weights.state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{weights.origin} has non-finite values (NaN or inf) in {shown}; the run that wrote them "
                        "diverged: retrain with lower learning rates")
