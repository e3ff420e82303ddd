"""What `golfctl plot` draws, read from a run folder or a pipeline output folder; no matplotlib here.

A run folder holds `metrics.jsonl` (and `ckpt.safetensors`); an output folder (what `make all`
fills) holds `run/`, `eval.json` and `artifact.bin`. Missing or damaged inputs are drawn as far
as their data goes: each costs one line in `warnings`, never an exception. A folder with nothing
to draw is a UserError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from golfctl.errors import UserError


@dataclass
class Segment:
    label: str
    bytes: int


@dataclass
class RunData:
    label: str  # the folder's name: the legend entry
    train: list[dict] = field(default_factory=list)  # metrics.jsonl "train" records, in file order
    val: list[dict] = field(default_factory=list)
    loop_steps: list[int] = field(default_factory=list)
    warmdown_step: float | None = None
    ttt_chunks: list[dict] = field(default_factory=list)  # eval.json results.ttt.chunks: nll_sum, tokens, bytes
    budget: list[Segment] = field(default_factory=list)  # the 16 MB bar, headroom last
    budget_limit: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.train or self.val or self.ttt_chunks or self.budget)


def load_run(folder: Path) -> RunData:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is {'a file' if folder.exists() else 'missing'}; pass a run folder (with "
                        "metrics.jsonl) or an output folder (what `make all` fills, e.g. artifacts)")
    run_dir = folder if (folder / "metrics.jsonl").is_file() or not (folder / "run").is_dir() else folder / "run"
    data = RunData(label=folder.resolve().name)
    _read_metrics(run_dir / "metrics.jsonl", data)
    _read_warmdown(run_dir / "ckpt.safetensors", data)
    eval_report = _read_json(folder / "eval.json", data)
    if eval_report is not None:
        _read_ttt(folder / "eval.json", eval_report, data)
    if (folder / "artifact.bin").is_file():
        _read_budget(folder / "artifact.bin", eval_report, data)
    if data.empty:
        raise UserError(f"{folder}: nothing to plot (no metrics.jsonl with records, no eval.json with TTT chunks, "
                        "no artifact.bin)")
    return data


def _read_metrics(path: Path, data: RunData) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        data.warnings.append(f"{path} does not exist; no training curves for {data.label}")
        return
    bad = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        kind = record.get("kind") if isinstance(record, dict) else None
        try:
            if kind == "train":
                data.train.append({k: float(record[k]) for k in ("step", "loss", "lr_mult", "elapsed_s")})
            elif kind == "val":
                data.val.append({k: float(record[k]) for k in ("step", "val_bpb")})
            elif kind == "loop":
                data.loop_steps.append(int(record["step"]))
        except (KeyError, TypeError, ValueError):
            bad.append(number)
    if bad:
        data.warnings.append(f"{path}: {len(bad)} line(s) cut or unreadable (line {bad[0]} first); drawn without them")


def _read_warmdown(ckpt: Path, data: RunData) -> None:
    """The step where warm-down starts, from the checkpoint's config; None without a checkpoint or
    under a wall-clock cap (the warm-down then starts by time, not by step)."""
    if not ckpt.is_file():
        return
    from golfctl.checkpoint import read_metadata

    try:
        config = json.loads(read_metadata(ckpt)["config"])
        if not config.get("max_wallclock_seconds"):
            data.warmdown_step = config["iterations"] * (1 - config["warmdown_frac"])
    except (UserError, KeyError, TypeError, ValueError):
        data.warnings.append(f"{ckpt}: no readable config; no warm-down marker for {data.label}")


def _read_json(path: Path, data: RunData) -> dict | None:
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        data.warnings.append(f"{path} is not valid JSON ({exc}); not drawn")
        return None
    return report if isinstance(report, dict) else None


def _read_ttt(path: Path, report: dict, data: RunData) -> None:
    chunks = (report.get("results") or {}).get("ttt", {}).get("chunks")
    if not chunks:
        data.warnings.append(f"{path} holds no TTT chunks (eval without --ttt?); no ttt.png for {data.label}")
        return
    data.ttt_chunks = [c for c in chunks if isinstance(c, dict) and c.get("bytes")]


def tensor_group(name: str, quantized: bool) -> str:
    """The budget bar's group of a stored tensor, by the model's parameter names (golfctl.model)."""
    if not quantized:
        return "control (fp16)"
    if name.startswith("tok_emb"):
        return "embeddings"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "MLP"
    return "other matrices"


GROUPS = ("embeddings", "attention", "MLP", "other matrices", "control (fp16)", "scales")


def budget_segments(path: Path, eval_settings: dict | None) -> tuple[list[Segment], int]:
    """The segments of the budget bar (code, tensor groups, scales, header+prefix, headroom) and the budget."""
    from golfctl.artifact import read_artifact
    from golfctl.budget import budget_for, chain_settings

    artifact = read_artifact(path)
    size = path.stat().st_size
    budget = budget_for(size, chain_settings(artifact.config, {**artifact.meta, "codec": artifact.codec},
                                             eval_settings))
    groups = dict.fromkeys(GROUPS, 0)
    for name, stored in artifact.stored.items():
        groups[tensor_group(name, stored.scale_codec is not None)] += stored.data_bytes
        groups["scales"] += stored.scale_bytes
    segments = [Segment("code", budget.code_bytes)] + [Segment(k, v) for k, v in groups.items() if v]
    segments.append(Segment("header+prefix", size - sum(groups.values())))
    segments.append(Segment("headroom", budget.headroom))
    return segments, budget.budget


def _read_budget(path: Path, report: dict | None, data: RunData) -> None:
    try:
        data.budget, data.budget_limit = budget_segments(path, (report or {}).get("settings"))
    except UserError as exc:
        data.warnings.append(f"no budget bar for {data.label}: {exc}")
