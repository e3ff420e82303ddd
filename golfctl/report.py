"""`golfctl report OUTDIR`: the result table of a pipeline run, read from its artifacts.

Reads `eval.json` (quantized artifact: plain, sliding, TTT), `eval_fp.json` (unquantized
model, plain), `artifact.bin` (bytes, with the code bytes of the budget), `run/ckpt.safetensors`
(training tokens and seconds) and the dataset (`data/` or `--data`: the order-0 reference: the unigram entropy of the
validation targets in bits per byte, what a model that ignores context would score).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from golfctl.artifact import read_artifact
from golfctl.budget import budget_for, chain_settings
from golfctl.checkpoint import load_checkpoint
from golfctl.dataset import open_dataset
from golfctl.errors import UserError


def unigram_bits_per_byte(tokens: np.ndarray, n_bytes: int) -> float:
    """Order-0 entropy of the targets (all tokens but the first) in bits, per byte of text."""
    counts = np.bincount(tokens[1:].astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum() * (tokens.size - 1) / n_bytes)


def report_lines(out: Path, data: Path | None = None) -> list[str]:
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is {'a file' if out.exists() else 'missing'}; pass the output folder of a run "
                        "(what `make all` fills, e.g. artifacts)")
    quantized = _read_eval(out / "eval.json")
    fp = _read_eval(out / "eval_fp.json")["results"]
    ckpt = load_checkpoint(out / "run" / "ckpt.safetensors")
    val = open_dataset(data or out / "data").splits["val"]
    # The bytes of the whole split come from the scored runs: official folders have no manifest count.
    reference = unigram_bits_per_byte(val.load_tokens(), fp["plain"]["bytes"])
    artifact = read_artifact(out / "artifact.bin")
    settings = chain_settings(artifact.config, {**artifact.meta, "codec": artifact.codec}, quantized["settings"])
    budget = budget_for((out / "artifact.bin").stat().st_size, settings)
    results = quantized["results"]
    rows = [("fp (plain)", fp["plain"]), ("quantized plain", results.get("plain")),
            ("quantized sliding", results.get("sliding")), ("quantized sliding+TTT", results.get("ttt"))]
    lines = ["", f"golfctl results for {out}", "  val BPB"]
    lines += [f"    {label:<24}{r['val_bpb']:>10.4f}" for label, r in rows if r]
    best = min(r["val_bpb"] for _, r in rows if r)
    lines += [f"    {'unigram reference':<24}{reference:>10.4f}   (best is {100 * (1 - best / reference):.1f}% below)",
              "  bytes"]
    lines += [f"  {line}" for line in budget.table()]
    train_tokens = ckpt.step * ckpt.config["train_batch_tokens"]
    eval_seconds = sum(r["seconds"] for r in results.values())
    lines += [f"  train       {train_tokens:,} tokens in {ckpt.step:,} steps, {ckpt.elapsed_seconds:,.1f} s",
              f"  eval        {eval_seconds:,.1f} s (" + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in results.items())
              + ")"]
    return lines


def _read_eval(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run `make all` (or golfctl eval) first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("format") != "golfctl.eval":
        raise UserError(f"{path} is not a golfctl eval result")
    if not all(math.isfinite(r.get("val_bpb", math.nan)) for r in report.get("results", {}).values()):
        raise UserError(f"{path} holds a non-finite score")
    return report
