"""`golfctl submit`: the exported train_gpt.py reproduces golfctl's chain without golfctl, and the
records folder's byte counts are the ones a reviewer computes."""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error, golfctl

from golfctl.errors import UserError
from golfctl.export import reached_modules, requirements
from golfctl.report import report_lines
from golfctl.ttt import TTTConfig
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.evaluate import EvalConfig, run_eval
from stages.quantize import QuantizeConfig, run_quantize
from stages.submit import run_submit
from stages.train import TrainRun, run_train
from test_train import small_config

SEEDS = (1337, 7)


def chain(data: Path, out: Path, seed: int) -> None:
    """What `make all` runs, in this process, on a few-second configuration bounded by steps."""
    run_train(TrainRun(cfg=small_config(seed=seed, iterations=4), data=data, out=out / "run"))
    run_ema_finalize(EmaFinalizeConfig(checkpoint=out / "run" / "ckpt.safetensors", out=out / "final.safetensors"))
    run_quantize(QuantizeConfig(model=out / "final.safetensors", data=data, out=out / "artifact.bin", calib_batches=2))
    run_eval(EvalConfig(model=out / "artifact.bin", data=data, out=out / "eval.json", ttt=True, stride=16,
                        ttt_config=TTTConfig(chunk_tokens=1024, epochs=1)))
    run_eval(EvalConfig(model=out / "final.safetensors", data=data, out=out / "eval_fp.json", sliding=False))


@pytest.fixture(scope="module")
def submission(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("submit")
    runs = [root / f"seed-{seed}" for seed in SEEDS]
    for run, seed in zip(runs, SEEDS):
        chain(small_dataset, run, seed)
    folder = root / "records" / "2026-12-03_test"
    result = golfctl("submit", *runs, "--out", folder, "--name", "test run", "--author", "A", "--github-id", "a")
    assert result.returncode == 0, result.stderr
    return runs, folder


def challenge_layout(root: Path, data: Path) -> Path:
    """DATA_DIR as the challenge's download script lays it out, pointing at `data`."""
    (root / "datasets").mkdir(parents=True)
    (root / "tokenizers").mkdir()
    (root / "datasets" / "fineweb10B_sp512").symlink_to(data, target_is_directory=True)
    (root / "tokenizers" / "fineweb_512_bpe.model").symlink_to(data / "tokenizer.model")
    return root


def test_exported_script_reproduces_the_chain_without_golfctl(tmp_path, submission, small_dataset):
    runs, folder = submission
    # -S: no .pth files, so the editable golfctl install is invisible; the site folders still give
    # torch and the other requirements, as a fresh venv with requirements.txt would
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages()),
           "DATA_DIR": str(challenge_layout(tmp_path / "data", small_dataset)),
           "ITERATIONS": "4", "MAX_WALLCLOCK_SECONDS": "0", "SEED": str(SEEDS[0])}
    python = [sys.executable, "-S"]
    assert subprocess.run([*python, "-c", "import golfctl"], cwd=folder, env=env, capture_output=True).returncode == 1
    result = subprocess.run([*python, "train_gpt.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    produced = folder / "golfctl_run"
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (runs[0] / "artifact.bin", produced / "artifact.bin")]
    assert sha[0] == sha[1]
    ours, theirs = (json.loads(p.read_text())["results"] for p in (runs[0] / "eval.json", produced / "eval.json"))
    for method in ("sliding", "ttt"):
        assert theirs[method]["val_bpb"] == ours[method]["val_bpb"]
        assert f"val_bpb:{ours[method]['val_bpb']:.8f}" in result.stdout
    script_bytes = (folder / "train_gpt.py").stat().st_size
    assert f"Code size: {script_bytes} bytes" in result.stdout


def test_records_folder_counts_bytes_as_a_reviewer_does(submission, small_dataset):
    runs, folder = submission
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [
        "README.md", "requirements.txt", "submission.json", "train_gpt.py", *(f"train_seed{s}.log" for s in SEEDS)]
    summary = json.loads((folder / "submission.json").read_text())
    script_bytes = len((folder / "train_gpt.py").read_bytes())  # wc -c
    assert summary["bytes_code"] == script_bytes and summary["seeds"] == list(SEEDS)
    for run, seed in zip(runs, SEEDS):
        artifact_bytes = (run / "artifact.bin").stat().st_size
        assert summary["seed_results"][str(seed)]["bytes_total"] == artifact_bytes + script_bytes
        # the report's budget line counts the same script
        table = report_lines(run, small_dataset)
        assert any(line.split()[:2] == ["total", f"{artifact_bytes + script_bytes:,}"] for line in table), table
    scores = [json.loads((r / "eval.json").read_text())["results"]["ttt"]["val_bpb"] for r in runs]
    assert summary["val_bpb"] == round(sum(scores) / 2, 5)
    assert (folder / "requirements.txt").read_text().split() == requirements(reached_modules())
    assert "train step" not in (folder / f"train_seed{SEEDS[0]}.log").read_text() and \
        "step 4/4" in (folder / f"train_seed{SEEDS[0]}.log").read_text()


def test_script_bundles_only_the_chain_without_docstrings_or_comments(submission):
    _, folder = submission
    text = (folder / "train_gpt.py").read_text()
    payload = text.split('b85decode("')[1].split('")')[0]
    program = lzma.decompress(base64.b85decode(payload), format=lzma.FORMAT_RAW,
                              filters=[{"id": lzma.FILTER_LZMA2}]).decode()
    modules = reached_modules()
    assert {"stages.train", "stages.quantize", "stages.evaluate", "golfctl.ttt"} <= set(modules)
    assert not {"golfctl.cli", "golfctl.describe", "golfctl.report", "golfctl.plan", "golfctl.export",
                "stages.eval_plan", "stages.submit"} & set(modules)
    assert "The whole chain in one process" not in program  # stages/chain.py's docstring
    assert "# eval.json's method name" not in program  # a comment of it
    assert len(text.splitlines()) == 2


def test_submit_refuses_what_is_not_one_configuration(tmp_path, submission):
    runs, folder = submission
    assert_clean_error(golfctl("submit", runs[0], runs[0], "--out", tmp_path / "twice"), "share a seed")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="not empty"):
        run_submit([runs[0]], folder, "n", "a", "a")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a finished run"):
        run_submit([tmp_path / "empty"], tmp_path / "x", "n", "a", "a")
    assert not (tmp_path / "x").exists()
