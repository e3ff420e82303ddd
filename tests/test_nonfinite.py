"""No number golfctl reports can be NaN: non-finite options, a diverging run and an indefinite Hessian
each end in one Error: line, and the run keeps its last finite state."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_error, golfctl

from golfctl.checkpoint import load_checkpoint
from golfctl.config import TrainConfig, config_from_dict
from golfctl.errors import UserError
from golfctl.ttt import TTTConfig
from stages.evaluate import EvalConfig, run_eval
from golfctl.weights import load_weights, save_model_file
from stages.quantize import DAMP_RAISES, QuantizeConfig, _gptq, run_quantize
from stages.tokenize import TokenizeConfig
from stages.train import TrainRun, run_train


@pytest.mark.parametrize("args, option", [
    (("eval", "a.bin", "--data", "d", "--out", "e.json", "--ttt", "--ttt-lr", "nan"), "--ttt-lr"),
    (("eval", "a.bin", "--data", "d", "--out", "e.json", "--ttt-grad-clip", "inf"), "--ttt-grad-clip"),
    (("quantize", "m.safetensors", "--data", "d", "--out", "a.bin", "--clip-sigmas", "nan"), "--clip-sigmas"),
    (("quantize", "m.safetensors", "--data", "d", "--out", "a.bin", "--damp", "-inf"), "--damp"),
    (("train", "--preset", "tiny", "--data", "d", "--out", "r", "--set", "max_wallclock_seconds=nan"),
     "max_wallclock_seconds"),
    (("train", "--preset", "tiny", "--data", "d", "--out", "r", "--set", "matrix_lr=nan"), "matrix_lr"),
])
def test_non_finite_options_are_refused_before_any_work(args, option):
    assert_clean_error(golfctl(*args), option, "finite")


def test_out_of_range_options():
    assert "--val-docs must be >= 1" in TokenizeConfig(out="d", val_docs=0).problems()[0]


def test_eval_refuses_windows_longer_than_the_scored_tokens(tmp_path, trained_run, small_dataset):
    with pytest.raises(UserError, match="--seq-len 100,000 is longer than the 2,000 validation targets"):
        run_eval(EvalConfig(model=trained_run / "ckpt.safetensors", data=small_dataset, out=tmp_path / "e.json",
                            seq_len=100_000, stride=64, max_val_tokens=2000))
    assert not (tmp_path / "e.json").exists()


def test_a_diverging_run_stops_with_its_last_finite_state(tmp_path, small_dataset):
    """Learning rates of 1e30 blow the weights up within two steps: the run stops, never writes NaN."""
    cfg = config_from_dict(TrainConfig, {
        "vocab_size": 512, "model_dim": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 32,
        "train_batch_tokens": 256, "iterations": 20, "log_every": 1, "compile": False,
        "matrix_lr": 1e30, "embed_lr": 1e30, "scalar_lr": 1e30})
    with pytest.raises(UserError, match="training diverged") as info:
        run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "run"))
    failed_step = int(re.search(r"step (\d+) has a non-finite", str(info.value)).group(1))
    ckpt = load_checkpoint(tmp_path / "run" / "ckpt.safetensors")
    assert ckpt.step == failed_step - 1 < 20
    tensors = [t for section in ckpt.tensors.values() for t in section.values() if t.is_floating_point()]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)


def test_gptq_raises_damping_a_bounded_number_of_times(capsys):
    W = torch.tensor([[0.5, -0.25], [0.1, 0.3]])
    scales = torch.full((2,), 0.05)
    indefinite = torch.tensor([[1.0, 1.05], [1.05, 1.0]])  # eigenvalues 2.05 and −0.05: damp 0.1 fixes it
    q = _gptq("blocks.0.w", W, indefinite, scales, 6, damp=0.01)
    assert q.shape == (2, 2) and "blocks.0.w" in capsys.readouterr().err
    with pytest.raises(UserError, match=f"blocks.0.w: .*not positive definite.*after {DAMP_RAISES} raises"):
        _gptq("blocks.0.w", W, -torch.eye(2), scales, 6, damp=0.01)  # no damping can fix a negative diagonal
    with pytest.raises(UserError, match="blocks.0.w: its calibration Hessian is not finite"):
        _gptq("blocks.0.w", W, torch.full((2, 2), math.nan), scales, 6, damp=0.01)
    assert np.isfinite(q.numpy()).all()


def test_a_diverging_ttt_writes_no_nan(tmp_path, trained_run, small_dataset):
    """TTT at lr 1e30 without clipping blows the weights up after the first chunk: no eval.json, one error."""
    cfg = EvalConfig(model=trained_run / "ckpt.safetensors", data=small_dataset, out=tmp_path / "e.json", plain=False,
                     sliding=False, ttt=True, max_val_tokens=1024, compile=False,
                     ttt_config=TTTConfig(chunk_tokens=256, lr=1e30, grad_clip=0.0, epochs=1))
    with pytest.raises(UserError, match="eval ttt: the loss is not finite.*lower --ttt-lr"):
        run_eval(cfg)
    assert not (tmp_path / "e.json").exists()


def test_quantize_and_eval_refuse_non_finite_weights_by_name(tmp_path, trained_run, small_dataset):
    weights = load_weights(trained_run / "ckpt.safetensors")
    state = dict(weights.state)
    state["blocks.0.mlp.fc.weight"] = state["blocks.0.mlp.fc.weight"].clone()
    state["blocks.0.mlp.fc.weight"][3, 5] = math.nan
    model = tmp_path / "nan.safetensors"
    save_model_file(model, dataclasses.replace(weights, state=state), provenance={})
    with pytest.raises(UserError, match="non-finite values .* in blocks.0.mlp.fc.weight"):
        run_quantize(QuantizeConfig(model=model, data=small_dataset, out=tmp_path / "a.bin"))
    with pytest.raises(UserError, match="non-finite values .* in blocks.0.mlp.fc.weight"):
        run_eval(EvalConfig(model=model, data=small_dataset, out=tmp_path / "e.json", max_val_tokens=512))
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "e.json").exists()  # e.log says why
