"""What `golfctl plot` draws, read from a run folder or a pipeline output folder; no matplotlib here.

A run folder holds `metrics.jsonl`; an output folder (what `make all` fills) holds `run/`,
`eval.json`, `artifact.bin` with its `artifact.quantize.json`, and perhaps a `compare.json`
(`golfctl compare --out`). Missing or damaged inputs are drawn as far as their data goes: each
costs one line in `warnings`, never an exception. A folder with nothing to draw is a UserError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from golfctl.errors import UserError
from golfctl.fileio import sha256_file
from golfctl.outputs import QUANTIZE_REPORT_FORMAT, quantize_report_path


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
    phases: dict[str, int] = field(default_factory=dict)  # "warmdown"/"ema" → the step it started at
    resumes: list[int] = field(default_factory=list)  # steps a resumed run continued from
    ttt_chunks: list[dict] = field(default_factory=list)  # eval.json results.ttt.chunks: nll_sum, tokens, bytes
    sliding_chunks: list[dict] = field(default_factory=list)  # the same chunks scored by sliding (or none)
    quantize: dict[str, dict] = field(default_factory=dict)  # artifact.quantize.json "tensors", matrices only
    budget: list[Segment] = field(default_factory=list)  # the 16 MB bar, headroom last
    budget_limit: int = 0
    compare: dict | None = None  # compare.json
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.train or self.val or self.ttt_chunks or self.quantize or self.budget or self.compare)


def load_run(folder: Path) -> RunData:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is {'a file' if folder.exists() else 'missing'}; pass a run folder (with "
                        "metrics.jsonl) or an output folder (what `make all` fills, e.g. artifacts)")
    run_dir = folder if (folder / "metrics.jsonl").is_file() or not (folder / "run").is_dir() else folder / "run"
    data = RunData(label=folder.resolve().name)
    data.compare = _read_json(folder / "compare.json", data)
    if data.compare is None or (run_dir / "metrics.jsonl").is_file():  # a comparison folder needs no run
        _read_metrics(run_dir / "metrics.jsonl", data)
    eval_report = _read_json(folder / "eval.json", data)
    if eval_report is not None:
        _read_ttt(folder / "eval.json", eval_report, data)
    artifact = folder / "artifact.bin"
    if artifact.is_file():
        _read_quantize(artifact, data)
        _read_budget(artifact, eval_report, data)
    if data.empty:
        raise UserError(f"{folder}: nothing to plot (no metrics.jsonl with records, no eval.json with TTT chunks, "
                        "no artifact.bin, no compare.json)")
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
            _add_record(json.loads(line), data)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            bad.append(number)
    if bad:
        data.warnings.append(f"{path}: {len(bad)} line(s) cut or unreadable (line {bad[0]} first); drawn without them")


def _add_record(record: dict, data: RunData) -> None:
    kind = record.get("kind")
    if kind == "train":
        data.train.append({k: float(record[k]) for k in ("step", "loss", "lr_mult", "elapsed_s")}
                          | {"momentum": float(record.get("momentum", "nan"))})  # older metrics lack it
    elif kind == "val":
        data.val.append({k: float(record[k]) for k in ("step", "val_bpb")})
    elif kind == "loop":
        data.loop_steps.append(int(record["step"]))
    elif kind == "phase":
        step = int(record["step"])
        data.phases[str(record["phase"])] = min(step, data.phases.get(record["phase"], step))
    elif kind == "resume":
        _resume_at(int(record["step"]), data)


def _resume_at(step: int, data: RunData) -> None:
    """A resumed run replays the steps after its checkpoint: the records a pre-empted run logged
    past `step` are superseded by the replay, so they are dropped."""
    data.train = [r for r in data.train if r["step"] <= step]
    data.val = [r for r in data.val if r["step"] <= step]
    data.loop_steps = [s for s in data.loop_steps if s <= step]
    data.resumes.append(step)


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
    results = report.get("results") or {}
    chunks = (results.get("ttt") or {}).get("chunks")
    if not chunks:
        why = ("its TTT is phased, which has no stream chunks" if "phased" in results
               else "eval without --ttt?")
        data.warnings.append(f"{path} holds no score-first TTT chunks ({why}); no ttt.png for {data.label}")
        return
    sliding = (results.get("sliding") or {}).get("chunks") or []
    if len(sliding) != len(chunks):
        data.warnings.append(f"{path} holds no per-chunk sliding sums (eval with --no-sliding, or an older golfctl); "
                             f"ttt.png shows {data.label}'s TTT BPB without the gain")
    pairs = [(t, s) for t, s in zip(chunks, sliding or [None] * len(chunks)) if isinstance(t, dict) and t.get("bytes")]
    data.ttt_chunks = [t for t, _ in pairs]
    data.sliding_chunks = [s for _, s in pairs if s is not None]


def _read_quantize(artifact: Path, data: RunData) -> None:
    path = quantize_report_path(artifact)
    report = _read_json(path, data)
    if report is None or report.get("format") != QUANTIZE_REPORT_FORMAT:
        data.warnings.append(f"{path} is missing or not a quantize report (an artifact of an older golfctl?); "
                             f"no quantize.png for {data.label}")
    elif report.get("artifact_sha256") != sha256_file(artifact):
        data.warnings.append(f"{path} describes another artifact than {artifact} (quantized again since?); "
                             f"no quantize.png for {data.label}")
    else:
        data.quantize = {name: t for name, t in report["tensors"].items() if t.get("group") != "fp16"}




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
