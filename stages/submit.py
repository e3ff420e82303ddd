"""Stage `submit`: finished runs (one per seed) → a records folder the challenge accepts.

A run is a `make all` output folder: run/ (checkpoint, metrics, train.log), artifact.bin and
eval.json. The folder gets `train_gpt.py` (golfctl/export.py: the chain bundled, the settings
baked in), `requirements.txt` (its non-standard imports, pinned as installed here),
`submission.json` (the 2026-04-09 record's fields, values computed from the runs, plus the byte
counts), `README.md` and `train_seed{N}.log` per run. The score is score-first TTT's val_bpb
(sliding's when a run has no TTT). The runs must share every setting but the seed.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from golfctl.artifact import read_artifact
from golfctl.budget import DEFAULT_BUDGET, chain_settings
from golfctl.checkpoint import load_checkpoint
from golfctl.compare import sample_std
from golfctl.config import TrainConfig, load_preset, preset_names, stored_config
from golfctl.errors import UserError
from golfctl.export import export_script, reached_modules, requirements
from golfctl.fileio import atomic_write_bytes
from golfctl.outputs import check_output_folder
from golfctl.plan import EVAL_BUDGET_SECONDS
from golfctl.provenance import git_revision
from stages.train import CHECKPOINT_NAME, LOG_NAME

TRAIN_CLOCK = 600.0  # seconds, on 8 × H100


@dataclass(frozen=True)
class Run:
    folder: Path
    seed: int
    config: dict
    settings: dict  # chain_settings of this run
    result: dict  # eval.json's scoring entry (ttt, else sliding)
    method: str
    artifact_bytes: int
    train_seconds: float
    eval_seconds: float
    provenance: dict


def run_submit(runs: list[Path], out: Path, name: str, author: str, github_id: str) -> dict:
    out = check_output_folder(out, inputs=runs)
    loaded = [_load_run(Path(r)) for r in runs]
    _check_same_settings(loaded)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new records folder")
    script = export_script(loaded[0].settings, git_revision())
    files = {"train_gpt.py": script,
             "requirements.txt": ("\n".join(requirements(reached_modules())) + "\n").encode()}
    summary = _submission(loaded, len(script), name, author, github_id)
    files["submission.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    files["README.md"] = _readme(loaded, summary).encode()
    for run in loaded:
        log = run.folder / "run" / LOG_NAME
        files[f"train_seed{run.seed}.log"] = log.read_bytes() if log.is_file() else b""
    out.mkdir(parents=True, exist_ok=True)
    for file_name, content in files.items():
        atomic_write_bytes(out / file_name, content)
    print(f"submit: wrote {out} ({', '.join(files)}); train_gpt.py {len(script):,} bytes, "
          f"val_bpb {summary['val_bpb']:.5f} over {len(loaded)} seed(s)", file=sys.stderr)
    return summary


def _load_run(folder: Path) -> Run:
    paths = {"checkpoint": folder / "run" / CHECKPOINT_NAME, "artifact": folder / "artifact.bin",
             "eval.json": folder / "eval.json"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"{folder} is not a finished run (missing {', '.join(missing)}); pass `make all` output "
                        "folders (OUT, or OUT/seed-N of `make seeds`)")
    ckpt = load_checkpoint(paths["checkpoint"])
    artifact = read_artifact(paths["artifact"])
    report = json.loads(paths["eval.json"].read_text(encoding="utf-8"))
    method = "ttt" if "ttt" in report["results"] else "sliding"
    if method not in report["results"] or report["settings"].get("max_val_tokens"):
        raise UserError(f"{paths['eval.json']} has no full sliding or TTT score; run `golfctl eval --ttt` on the "
                        "whole validation split")
    results = report["results"]
    return Run(folder, int(ckpt.config["seed"]), ckpt.config,
               chain_settings(stored_config(ckpt.config), {**artifact.meta, "codec": artifact.codec}, report["settings"]),
               results[method], method, paths["artifact"].stat().st_size, ckpt.elapsed_seconds,
               sum(r["seconds"] for r in results.values()) + report.get("compile", {}).get("warmup_seconds", 0.0),
               ckpt.provenance)


def _check_same_settings(runs: list[Run]) -> None:
    differing = [str(r.folder) for r in runs[1:] if r.settings != runs[0].settings]  # settings hold no seed
    if differing:
        raise UserError(f"{', '.join(differing)} differ from {runs[0].folder} in more than the seed; one submission "
                        "is one configuration")
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"two runs share a seed ({seeds}); pass one run per seed")


def _submission(runs: list[Run], code_bytes: int, name: str, author: str, github_id: str) -> dict:
    bpb = [r.result["val_bpb"] for r in runs]
    loss = [r.result["val_loss"] for r in runs]
    totals = [r.artifact_bytes + code_bytes for r in runs]
    prov = runs[0].provenance
    return {
        "author": author, "github_id": github_id, "name": name, "date": datetime.date.today().isoformat(),
        "track": "10min_16mb",
        "val_bpb": round(statistics.fmean(bpb), 5), "val_bpb_std": round(sample_std(bpb), 5),
        "val_loss": round(statistics.fmean(loss), 5), "val_loss_std": round(sample_std(loss), 5),
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {"val_bpb": round(r.result["val_bpb"], 5), "val_loss": round(r.result["val_loss"], 5),
                                       "artifact_bytes": r.artifact_bytes, "bytes_total": total}
                         for r, total in zip(runs, totals)},
        "bytes_code": code_bytes, "bytes_total": max(totals),
        "hardware": f"{prov.get('world_size', 1)}x {prov.get('device', 'unknown')}",
        "pytorch_version": prov.get("torch"),
        "technique_summary": _techniques(runs[0].config, runs[0].settings),
        "compliance": {
            "train_under_600s": all(r.train_seconds <= TRAIN_CLOCK for r in runs),
            "artifact_under_16mb": max(totals) <= DEFAULT_BUDGET,
            "eval_under_600s": all(r.eval_seconds <= EVAL_BUDGET_SECONDS for r in runs),
            "score_first_ttt": runs[0].method == "ttt",
            "three_seeds": len(runs) >= 3,
        },
        "attribution": {"toolkit": "golfctl"},
    }


def _techniques(config: dict, settings: dict) -> str:
    cfg = stored_config(config)
    parts = [f"SP{cfg['vocab_size']}", f"{cfg['num_layers']}L×{cfg['model_dim']}"]
    if cfg["num_loops"] > 1:
        parts.append(f"{cfg['num_loops']}× depth recurrence (L{cfg['loop_start']}-{cfg['loop_end']})")
    if cfg["parallel_start"] >= 0:
        parts.append(f"parallel residuals (L{cfg['parallel_start']}+)")
    if cfg["xsa_last_n"]:
        parts.append(f"XSA (last {cfg['xsa_last_n']})")
    q = settings["quantize"]
    parts.append(f"{q.get('method', 'gptq').upper()} int{q.get('bits', 6)} SDClip + {q.get('codec', 'ans')}")
    if settings["evaluate"].get("ttt"):
        parts.append("score-first TTT")
    return " + ".join(parts)


def _closest_preset(config: dict) -> tuple[str, list[str]]:
    """The preset that differs from the run's config in the fewest keys, and those differences."""
    full = stored_config(config)
    best: tuple[str, list[str]] | None = None
    for preset in preset_names():
        base = asdict(TrainConfig(**{**asdict(TrainConfig()), **load_preset(preset)}))
        diff = [f"{k} = {full[k]!r} (preset {base[k]!r})" for k in base if full.get(k) != base[k]]
        if best is None or len(diff) < len(best[1]):
            best = (preset, diff)
    return best


def _readme(runs: list[Run], summary: dict) -> str:
    preset, diff = _closest_preset(runs[0].config)
    rows = "\n".join(f"| {r.seed} | {r.result['val_bpb']:.5f} | {r.result['val_loss']:.5f} | {r.artifact_bytes:,} | "
                     f"{r.artifact_bytes + summary['bytes_code']:,} | {r.train_seconds:.1f} | {r.eval_seconds:.1f} |"
                     for r in runs)
    changes = "\n".join(f"- `{line}`" for line in diff) or "- none"
    return f"""# {summary['name']}

**val_bpb {summary['val_bpb']:.5f}** (std {summary['val_bpb_std']:.5f}) over seeds {', '.join(map(str, summary['seeds']))},
scored by {'score-first TTT over sliding windows' if runs[0].method == 'ttt' else 'sliding windows'}.

| seed | val_bpb | val_loss | artifact bytes | total bytes | train s | eval s |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Code: `train_gpt.py`, {summary['bytes_code']:,} bytes (the whole pipeline, generated by golfctl from its
own modules: docstrings and comments stripped, LZMA2-compressed, base85 in an `exec` stub).

## Run it

```
pip install -r requirements.txt
torchrun --standalone --nproc_per_node=8 train_gpt.py
```

`DATA_DIR` (default `./data/`) holds `datasets/fineweb10B_sp{runs[0].config['vocab_size']}/` and
`tokenizers/fineweb_{runs[0].config['vocab_size']}_bpe.model` as the challenge's download script writes them. `SEED` picks the
seed (default 1337; the table's runs: `SEED=N`); `ITERATIONS` and `MAX_WALLCLOCK_SECONDS` override the baked config. It trains within the clock
(GPTQ calibration inside its reserve), quantizes, then scores sliding windows and score-first TTT.

Hardware: {summary['hardware']}, PyTorch {summary['pytorch_version']}.

## Configuration

golfctl preset `{preset}`, with these differences:

{changes}

## Techniques

{summary['technique_summary']}
"""
