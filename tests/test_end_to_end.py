"""The whole chain through the Makefile and the real CLI, on a few-second configuration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from golfctl.describe import describe

ROOT = Path(__file__).resolve().parent.parent
# Tiny everything: 2 layers × 32, 64-token sequences, 6 steps; the chain, not the score, is under test
# (the compiled chain is test_compile.py's bench_gpu run).
TRAIN_ARGS = " ".join(f"--set {kv}" for kv in (
    "vocab_size=512", "model_dim=32", "num_layers=2", "num_heads=2", "num_kv_heads=1", "loop_start=0", "loop_end=1",
    "parallel_start=1", "train_seq_len=64", "train_batch_tokens=1024", "grad_accum=2", "iterations=6",
    "val_every=0", "log_every=2", "compile=false"))


def make(out: Path, corpus: Path, quant_args: str = "--calib-batches 2",
         dry_run: bool = False) -> subprocess.CompletedProcess:
    """`make all` with the few-second configuration; `dry_run` only lists what would run (`make -n`)."""
    variables = {"OUT": out, "CORPUS": corpus, "VOCAB": 512, "TOKENIZE_ARGS": "--val-docs 1", "TRAIN_ARGS": TRAIN_ARGS,
                 "QUANT_ARGS": quant_args, "EVAL_ARGS": "--ttt --stride 32 --ttt-chunk-tokens 2048 --ttt-epochs 1"}
    args = ["make", "--no-print-directory", *(["-n"] if dry_run else []), "all",
            *(f"{k}={v}" for k, v in variables.items())]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def stages_run(result: subprocess.CompletedProcess) -> list[str]:
    commands = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(".venv/bin/golfctl ")]
    return [c for c in commands if c != "report"]


def inspect(path: Path) -> str:
    """What `golfctl inspect` prints, in this process (the CLI's own run is tested elsewhere)."""
    return "\n".join(describe(path))


def test_make_all_chain_reruns_only_what_changed(tmp_path, small_corpus):
    out = tmp_path / "artifacts"
    first = make(out, small_corpus)
    assert stages_run(first) == ["tokenize", "train", "ema-finalize", "quantize", "eval", "eval", "plot"]
    for name, kind in [("data", "golfctl.dataset v1"), ("run/ckpt.safetensors", "training checkpoint"),
                       ("final.safetensors", "golfctl.model v1"), ("artifact.bin", "golfctl.quantized v2")]:
        assert kind in inspect(out / name), name
    report = json.loads((out / "eval.json").read_text())
    assert report["format"] == "golfctl.eval" and set(report["results"]) == {"plain", "sliding", "ttt"}
    for entry in report["results"].values():
        assert set(entry) >= {"val_loss", "val_bpb", "tokens", "bytes", "seconds"} and 0 < entry["val_bpb"] < 10
    assert report["results"]["ttt"]["chunks"] and report["settings"]["ttt_epochs"] == 1
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["budget.png", "quantize.png", "train.png", "ttt.png"]
    for fragment in ("quantized sliding+TTT", "unigram reference", "headroom", "train", "plots/: budget.png"):
        assert fragment in first.stdout
    assert "Nothing to rerun" not in first.stdout
    second = make(out, small_corpus)
    assert stages_run(second) == [], "a second make all must do nothing"
    assert "Nothing to rerun" in second.stdout and "quantized sliding+TTT" in second.stdout
    assert stages_run(make(out, small_corpus, quant_args="--calib-batches 2 --method rtn")) == ["quantize", "eval",
                                                                                                 "plot"]
    (out / "run" / "ckpt.safetensors").unlink()
    assert stages_run(make(out, small_corpus, quant_args="--calib-batches 2 --method rtn", dry_run=True)) == [
        "train", "ema-finalize", "quantize", "eval", "eval", "plot"], "a deleted checkpoint reruns train onward"


def test_make_all_on_an_official_dataset_skips_tokenize(tmp_path):
    """DATA/TOKENIZER point every stage at a given folder; NPROC runs train and eval under torchrun."""
    args = ["make", "-n", "--no-print-directory", "all", f"OUT={tmp_path}", "DATA=/d/fineweb10B_sp1024",
            "TOKENIZER=/d/fineweb_1024_bpe.model", "PRESET=baseline", "NPROC=8"]
    plan = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "golfctl tokenize" not in plan
    assert "--nproc_per_node=8 -m golfctl train --data /d/fineweb10B_sp1024 --tokenizer /d/fineweb_1024_bpe.model " \
           "--preset baseline" in plan
    assert "final.safetensors --data /d/fineweb10B_sp1024 --out" in plan  # quantize calibrates on it
    assert plan.count("-m golfctl eval") == 2 and plan.count("--tokenizer /d/fineweb_1024_bpe.model") == 3
