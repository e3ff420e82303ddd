"""`golfctl config` and `golfctl train --resume` without config flags, run in-process (no subprocess)."""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error, golfctl

from golfctl.checkpoint import load_checkpoint
from golfctl.config import TrainConfig, config_from_dict, resolve_config, toml_value
from stages.train import TrainRun, run_train

# Two steps of a width-32 model on the small dataset: well under a second per step on 2 cores.
SMALL = {
    "vocab_size": 512, "model_dim": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2.0,
    "train_seq_len": 32, "train_batch_tokens": 512, "grad_accum": 1, "iterations": 2, "log_every": 1,
    "val_max_tokens": 1024, "seed": 11, "compile": False,
}


def table(stdout: str) -> dict[str, tuple[str, str, str]]:
    """`golfctl config` output as key → (value, source, help); fails on a key listed twice."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition("=")
        value, _, comment = rest.partition("#")
        source, _, help_text = comment.strip().partition("  ")
        assert key.strip() not in rows, f"{key.strip()} listed twice"
        rows[key.strip()] = (value.strip(), source.strip(), help_text.strip())
    return rows


def test_config_lists_every_key_once_with_value_source_and_help():
    result = golfctl("config", "--preset", "record")
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    record = resolve_config(TrainConfig, "record")
    assert sorted(rows) == sorted(f.name for f in fields(TrainConfig))
    for name, (value, source, help_text) in rows.items():
        assert value == toml_value(getattr(record, name)), name
        assert source in ("preset record", "default"), (name, source)
        assert help_text, f"{name} has no help text"
    assert rows["num_layers"][1] == "preset record" and rows["val_max_tokens"][1] == "default"


def test_config_sources_and_output_read_back(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("model_dim = 96\nwarmup_steps = 3\n")
    result = golfctl("config", "--preset", "tiny", "--config", file, "--set", "warmup_steps=4", "--set", "seed=9")
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows["num_layers"][:2] == ("4", "preset tiny")
    assert rows["model_dim"][:2] == ("96", f"file {file}")
    assert rows["warmup_steps"][:2] == ("4", "--set")  # --set over the file
    assert rows["seed"][:2] == ("9", "--set")
    assert rows["adam_eps"][:2] == ("1e-08", "default")
    assert rows["mlp_activation"][0] == '"relu2"'
    # The listing is a config file of its own.
    listing = tmp_path / "listing.toml"
    listing.write_text(result.stdout)
    assert resolve_config(TrainConfig, None, listing) == \
        resolve_config(TrainConfig, "tiny", file, ("warmup_steps=4", "seed=9"))


@pytest.mark.parametrize("args, fragments", [
    (["--preset", "tiny", "--set", "modl_dim=64"], ["unknown key 'modl_dim' (from --set)"]),
    (["--preset", "huge"], ["unknown preset 'huge'", "tiny"]),
    (["--preset", "tiny", "--set", "num_layers=2.5"], ["num_layers must be int"]),
    (["--preset", "tiny", "--set", "matrix_lr=nan"], ["matrix_lr must be a finite number, got nan"]),
    (["--config", "missing.toml"], ["missing.toml does not exist"]),
])
def test_config_bad_input_is_one_error_line(args, fragments):
    result = golfctl("config", *args)
    assert_clean_error(result, *fragments)
    assert result.stdout == ""


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, small_dataset) -> Path:
    """A run folder stopped after step 1 of 2."""
    out = tmp_path_factory.mktemp("half") / "run"
    summary = run_train(TrainRun(cfg=config_from_dict(TrainConfig, SMALL), data=small_dataset, out=out,
                                 stop_after_steps=1))
    assert summary["step"] == 1
    return out


@pytest.fixture
def run_copy(tmp_path, half_run) -> Path:
    shutil.copytree(half_run, tmp_path / "run")
    return tmp_path / "run"


def test_flagless_resume_uses_the_stored_config(run_copy, small_dataset, one_thread):
    result = golfctl("train", "--resume", "--out", run_copy, "--data", small_dataset)
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stderr and "model_dim = 32" in result.stderr
    ckpt = load_checkpoint(run_copy / "ckpt.safetensors")
    assert ckpt.step == 2
    assert config_from_dict(TrainConfig, ckpt.config) == config_from_dict(TrainConfig, SMALL)


def test_resume_refuses_a_key_that_changes_the_run(run_copy, small_dataset):
    before = (run_copy / "ckpt.safetensors").read_bytes()
    result = golfctl("train", "--resume", "--out", run_copy, "--data", small_dataset,
                     "--set", "model_dim=64", "--set", "seed=12", "--set", "log_every=3")
    line = assert_clean_error(result, "model_dim stored 32, requested 64 (--set)", "seed stored 11, requested 12")
    assert "log_every stored" not in line  # a run-control key is no conflict
    assert (run_copy / "ckpt.safetensors").read_bytes() == before


def test_resume_applies_run_control_keys(run_copy, small_dataset, one_thread):
    result = golfctl("train", "--resume", "--out", run_copy, "--data", small_dataset,
                     "--set", "log_every=5", "--set", "val_every=7", "--set", "seed=11")  # seed as stored: no change
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(run_copy / "ckpt.safetensors")
    assert ckpt.step == 2
    assert (ckpt.config["log_every"], ckpt.config["val_every"], ckpt.config["model_dim"]) == (5, 7, 32)


def test_flagless_resume_without_a_checkpoint(tmp_path, small_dataset):
    assert_clean_error(golfctl("train", "--resume", "--out", tmp_path / "run", "--data", small_dataset),
                       "ckpt.safetensors does not exist", "without --resume")
    assert_clean_error(golfctl("train", "--out", tmp_path / "run", "--data", small_dataset), "--preset", "--resume")
