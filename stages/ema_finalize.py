"""Stage `ema-finalize`: a training checkpoint → `final.safetensors` (its EMA, or raw, weights).

With `compare`, both weight sets are scored on the validation split (plain BPB over
non-overlapping windows at the model's evaluation depth) and printed side by side.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from golfctl.checkpoint import CHECKPOINT_FORMAT, read_metadata
from golfctl.dataset import open_dataset
from golfctl.errors import UserError, refuse_problems
from golfctl.outputs import MODEL, check_output_file
from golfctl.provenance import provenance
from golfctl.validation import load_validation_set, score_weights
from golfctl.weights import load_weights, save_model_file


@dataclass(frozen=True)
class EmaFinalizeConfig:
    checkpoint: Path = field(metadata={"argument": True})
    out: Path = field(metadata={"help": "Model file to write (final.safetensors)."})
    raw: bool = field(default=False, metadata={"help": "Export the raw weights instead of the EMA."})
    compare: bool = field(default=False, metadata={
        "help": "Score raw and EMA weights on the validation split (needs --data)."})
    data: Path | None = field(default=None, metadata={"help": "Dataset folder, for --compare."})
    tokenizer: Path | None = field(default=None, metadata={"help": "Tokenizer .model for datasets that carry none."})

    def problems(self) -> list[str]:
        if self.compare and self.data is None:
            return ["--compare scores the weights on the validation split: pass --data DIR"]
        return []


def run_ema_finalize(cfg: EmaFinalizeConfig) -> dict:
    refuse_problems(cfg.problems())
    check_output_file(cfg.out, MODEL, inputs=(cfg.checkpoint, cfg.tokenizer))
    if read_metadata(cfg.checkpoint).get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{cfg.checkpoint} is not a training checkpoint; pass RUNDIR/ckpt.safetensors")
    weights = load_weights(cfg.checkpoint, raw=cfg.raw)
    device = torch.device("cpu")
    save_model_file(cfg.out, weights, provenance(device, 1))
    _say(f"ema-finalize: wrote {cfg.out} ({weights.origin}, {sum(t.numel() for t in weights.state.values()):,} values)")
    summary: dict = {"out": str(cfg.out), "weights": weights.kind}
    if cfg.compare:
        val = load_validation_set(open_dataset(cfg.data), cfg.tokenizer, weights.config.vocab_size, 1, device,
                                  model_tokenizer_sha256=weights.tokenizer_sha256)
        for kind in ("raw", "ema"):
            result = score_weights(load_weights(cfg.checkpoint, raw=kind == "raw"), val, device)
            summary[kind] = {"val_loss": result.loss, "val_bpb": result.bpb}
            _say(f"  {kind:<4} weights: val_loss {result.loss:.4f}  val_bpb {result.bpb:.4f}  ({result.tokens:,} tokens)")
    return summary


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
