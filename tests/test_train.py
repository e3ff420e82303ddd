"""The train stage: golden losses, exact resume, SIGTERM, torchrun parity, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clean_error, golfctl
from safetensors import safe_open

from golfctl.checkpoint import load_checkpoint, read_metadata
from golfctl.config import TrainConfig, config_from_dict
from stages.train import TrainRun, run_train

# A few-second model with every wiring option (parallel blocks, range loops switched on mid-run,
# U-Net skips), small enough for 2 CPU cores.
SMALL = {
    "vocab_size": 512, "model_dim": 32, "num_layers": 3, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2.0,
    "parallel_start": 2, "loop_start": 1, "loop_end": 1, "num_loops": 2, "enable_looping_at": 0.5,
    "train_seq_len": 32, "train_batch_tokens": 512, "grad_accum": 2, "iterations": 8, "warmup_steps": 2,
    "warmdown_frac": 0.5, "log_every": 1, "val_max_tokens": 2048, "ema_decay": 0.9, "seed": 5, "compile": False,
}


def small_config(**changes) -> TrainConfig:
    return config_from_dict(TrainConfig, {**SMALL, **changes})


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if r["kind"] == "train"]


def test_golden_losses_and_checkpoint_layout(tmp_path, small_dataset, golden):
    summary = run_train(TrainRun(cfg=small_config(), data=small_dataset, out=tmp_path / "run"))
    assert summary["stopped"] == "iterations" and summary["step"] == 8
    losses = train_losses(tmp_path / "run")
    golden("train_small_losses.json", {"about": "train loss at each step of small_config() on small_dataset",
                                       "losses": {str(s): round(v, 6) for s, v in losses}}, tolerance=5e-5)
    ckpt = tmp_path / "run" / "ckpt.safetensors"
    meta = read_metadata(ckpt)
    layout = [f"metadata {k}" for k in sorted(meta)] + [f"{k} {tuple(t.shape)} {t.dtype}"
                                                      for k, t in sorted(all_tensors(ckpt).items()) if k != "rng.torch"]
    golden("train_small_checkpoint.txt", "\n".join(layout) + "\n")
    assert meta["format"] == "golfctl.checkpoint" and meta["step"] == "8"
    assert json.loads(meta["config"])["model_dim"] == 32
    assert losses[-1][1] < losses[0][1]


def test_resume_is_bit_identical(tmp_path, small_dataset):
    cfg = small_config(iterations=7)
    run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "straight"))
    first = run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "split", stop_after_steps=3))
    assert first["stopped"] == "stop_after_steps" and first["step"] == 3
    # Run-control keys may change on resume; they never touch the weights.
    run_train(TrainRun(cfg=replace(cfg, log_every=2), data=small_dataset, out=tmp_path / "split", resume=True))
    straight = all_tensors(tmp_path / "straight" / "ckpt.safetensors")
    split = all_tensors(tmp_path / "split" / "ckpt.safetensors")
    assert straight.keys() == split.keys()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key


def test_sigterm_leaves_resumable_checkpoint(tmp_path, small_dataset):
    out = tmp_path / "run"
    args = ["train", "--data", small_dataset, "--config", small_toml(tmp_path), "--set", "iterations=100000",
            "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "golfctl", *map(str, args)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(_lines(out / "metrics.jsonl")) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "continue with --resume" in stderr
    stopped_at = load_checkpoint(out / "ckpt.safetensors").step
    assert stopped_at >= 3
    result = golfctl(*args, "--resume", "--stop-after-steps", 2)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(out / "ckpt.safetensors").step == stopped_at + 2


def small_toml(tmp_path: Path) -> Path:
    """SMALL as a config file for the CLI (JSON scalars are valid TOML values)."""
    path = tmp_path / "small.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in SMALL.items()))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_torchrun_two_ranks_match_one_process(tmp_path, small_dataset):
    cfg = small_config(iterations=4)
    run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "golfctl", "train", "--data", small_dataset, "--config", small_toml(tmp_path),
                             "--set", "iterations=4", "--out", tmp_path / "two"], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    one = all_tensors(tmp_path / "one" / "ckpt.safetensors")
    two = all_tensors(tmp_path / "two" / "ckpt.safetensors")
    for key in (k for k in one if k.startswith(("model.", "ema."))):
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert json.loads(read_metadata(tmp_path / "two" / "ckpt.safetensors")["provenance"])["world_size"] == 2


@pytest.mark.parametrize("sets, fragments", [
    (["vocab_size=1024"], ["vocab_size 1024", "512"]),
    (["train_batch_tokens=4194304", "train_seq_len=1024"], ["fewer than one batch"]),
    (["modl_dim=64"], ["unknown key 'modl_dim'"]),
    (["model_dim=big"], ["model_dim must be int"]),
])
def test_bad_config(tmp_path, small_dataset, sets, fragments):
    args = [a for s in sets for a in ("--set", s)]
    assert_clean_error(golfctl("train", "--data", small_dataset, "--config", small_toml(tmp_path), *args,
                               "--out", tmp_path / "run"), *fragments)
    assert not (tmp_path / "run" / "ckpt.safetensors").exists()


def test_missing_data_and_refused_resume(tmp_path, small_dataset):
    assert_clean_error(golfctl("train", "--data", tmp_path / "nope", "--preset", "tiny", "--out", tmp_path / "run"),
                       "does not exist")
    assert_clean_error(golfctl("train", "--data", small_dataset, "--config", small_toml(tmp_path), "--out", tmp_path / "run",
                               "--resume"), "does not exist")
    run_train(TrainRun(cfg=small_config(iterations=2), data=small_dataset, out=tmp_path / "run"))
    assert_clean_error(golfctl("train", "--data", small_dataset, "--config", small_toml(tmp_path), "--set",
                               "iterations=2", "--set", "model_dim=64", "--out", tmp_path / "run", "--resume"),
                       "another config", "model_dim")
    assert_clean_error(golfctl("train", "--data", small_dataset, "--config", small_toml(tmp_path), "--out", tmp_path / "run"),
                       "already holds a checkpoint")


def test_inspect_checkpoint_and_damaged_copies(tmp_path, small_dataset):
    run_train(TrainRun(cfg=small_config(iterations=2), data=small_dataset, out=tmp_path / "run"))
    ckpt = tmp_path / "run" / "ckpt.safetensors"
    result = golfctl("inspect", ckpt)
    assert result.returncode == 0, result.stderr
    assert "training checkpoint" in result.stdout and "step        2 of 2" in result.stdout
    raw = ckpt.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    assert_clean_error(golfctl("inspect", tmp_path / "cut.safetensors"), "cut.safetensors")
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "ckpt.safetensors").write_bytes(raw[: len(raw) // 2])
    assert_clean_error(golfctl("train", "--data", small_dataset, "--config", small_toml(tmp_path), "--set",
                               "iterations=2", "--out", tmp_path / "run2", "--resume"), "ckpt.safetensors")
