"""`golfctl report OUTDIR`: the result table of a pipeline run, read from its artifacts.

Reads `eval.json` (quantized artifact: plain, sliding, TTT), `eval_fp.json` (unquantized
model, plain), `artifact.bin` (bytes, with the code bytes of the budget), `run/ckpt.safetensors`
(training tokens and seconds) and the dataset (`data/` or `--data`) for the order-0 reference:
the unigram entropy of the scored targets in bits per byte, what a model that ignores context
would score.

Token ranges. An eval scores target positions 1..`settings.val_targets` of the validation split
(all of them, or a prefix under `--max-val-tokens`). The reference is computed over exactly
those targets and their bytes, as the eval counted them. When `eval.json` and `eval_fp.json`
scored different ranges, every row says which targets it covers and each range gets its own
reference: scores over different text are never compared with each other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golfctl.artifact import read_artifact
from golfctl.budget import budget_for, chain_settings
from golfctl.checkpoint import load_checkpoint
from golfctl.dataset import dataset_identity, open_dataset
from golfctl.errors import UserError


def unigram_bits_per_byte(tokens: np.ndarray, n_bytes: int) -> float:
    """Order-0 entropy of the targets (all tokens but the first) in bits, per byte of text."""
    counts = np.bincount(tokens[1:].astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum() * (tokens.size - 1) / n_bytes)


@dataclass(frozen=True)
class _Row:
    label: str
    source: str  # the eval file's name
    result: dict  # its results entry: val_bpb, tokens, bytes, …
    targets: int  # it scored target positions 1..targets


def report_lines(out: Path, data: Path | None = None) -> list[str]:
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is {'a file' if out.exists() else 'missing'}; pass the output folder of a run "
                        "(what `make all` fills, e.g. artifacts)")
    quantized = _read_eval(out / "eval.json")
    fp = _read_eval(out / "eval_fp.json")
    ckpt = load_checkpoint(out / "run" / "ckpt.safetensors")
    dataset = open_dataset(data or out / "data")
    for name, report in (("eval.json", quantized), ("eval_fp.json", fp)):
        if report.get("inputs", {}).get("dataset") != dataset_identity(dataset):
            raise UserError(f"{out / name} was scored on another dataset than {dataset.root}; pass the --data it "
                            "was scored on")
    val = dataset.splits["val"].load_tokens()
    rows = [_row("fp (plain)", "eval_fp.json", fp, "plain"), _row("quantized plain", "eval.json", quantized, "plain"),
            _row("quantized sliding", "eval.json", quantized, "sliding"),
            _row("quantized sliding+TTT", "eval.json", quantized, "ttt"),
            _row("quantized phased TTT", "eval.json", quantized, "phased")]
    rows = [r for r in rows if r is not None]
    if not rows:
        raise UserError(f"{out}: eval.json and eval_fp.json hold no results; rerun golfctl eval")
    ranges = sorted({r.targets for r in rows}, reverse=True)
    if ranges[0] > val.size - 1:
        raise UserError(f"{out} scored {ranges[0]:,} targets; the validation split of {dataset.root} has "
                        f"{val.size - 1:,}: pass the --data it was scored on")

    def covers(targets: int) -> str:
        return f"all {targets:,} targets" if targets == val.size - 1 else f"the first {targets:,} targets"

    mixed = len(ranges) > 1
    lines = ["", f"golfctl results for {out}",
             "  val BPB (eval.json and eval_fp.json scored different targets: compare rows over the same)" if mixed
             else f"  val BPB over {covers(ranges[0])}" + ("" if ranges[0] == val.size - 1 else
                                                            f" of {val.size - 1:,} (--max-val-tokens)")]
    lines += [f"    {r.label:<24}{r.result['val_bpb']:>10.4f}" + (f"   {covers(r.targets)}" if mixed else "")
              for r in rows]
    for targets in ranges:
        same = [r for r in rows if r.targets == targets]
        reference = unigram_bits_per_byte(val[: targets + 1], _scored_bytes(out, same))
        gain = 100 * (1 - min(r.result["val_bpb"] for r in same) / reference)
        note = f"best is {abs(gain):.1f}% {'below' if gain >= 0 else 'above'}"
        lines.append(f"    {'unigram reference':<24}{reference:>10.4f}   " +
                     (f"{covers(targets)} ({note})" if mixed else f"({note})"))
    artifact = read_artifact(out / "artifact.bin")
    settings = chain_settings(artifact.config, {**artifact.meta, "codec": artifact.codec}, quantized["settings"])
    budget = budget_for((out / "artifact.bin").stat().st_size, settings)
    lines += ["  bytes"] + [f"  {line}" for line in budget.table()]
    results = quantized["results"]
    train_tokens = ckpt.step * ckpt.config["train_batch_tokens"]
    eval_seconds = sum(r["seconds"] for r in results.values())
    lines += [f"  train       {train_tokens:,} tokens in {ckpt.step:,} steps, {ckpt.elapsed_seconds:,.1f} s",
              f"  eval        {eval_seconds:,.1f} s (" + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in results.items())
              + ")"]
    plots = sorted((out / "plots").glob("*.png"))
    if plots:
        lines.append(f"  plots       {plots[0].parent}/: " + ", ".join(p.name for p in plots))
    return lines


def _row(label: str, source: str, report: dict, method: str) -> _Row | None:
    """The row of one method's result, with the targets it scored (None: the method was not run)."""
    result = report["results"].get(method)
    if result is None:
        return None
    targets = report.get("settings", {}).get("val_targets", result.get("tokens"))
    if not isinstance(targets, int) or targets < 1 or result.get("tokens") != targets:
        raise UserError(f"{source}: {method} scored {result.get('tokens')} targets, its settings say {targets}; "
                        "rerun golfctl eval")
    return _Row(label, source, result, targets)


def _scored_bytes(out: Path, rows: list[_Row]) -> int:
    """The bytes of the targets the rows scored: the same for every row, or the files disagree."""
    counts = {(r.source, r.label): r.result.get("bytes") for r in rows}
    n_bytes = rows[0].result.get("bytes")
    if len(set(counts.values())) != 1 or not isinstance(n_bytes, int) or n_bytes < 1:
        detail = ", ".join(f"{label} in {source}: {n}" for (source, label), n in counts.items())
        raise UserError(f"{out}: results over the first {rows[0].targets:,} targets count different bytes ({detail}); "
                        "were they scored with different tokenizers? Rerun golfctl eval for both")
    return n_bytes


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
