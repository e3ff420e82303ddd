"""The wall-clock cap: a capped run stops by time, in its warm-down, with a checkpoint resume and ema-finalize take."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from golfctl.checkpoint import load_checkpoint
from golfctl.config import TrainConfig, config_from_dict
from golfctl.weights import load_weights
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.train import TrainRun, run_train

CAP_SECONDS = 3.0
# The trained_run fixture's model and batch, with far more iterations than 3 s allow: the cap must stop it.
CAPPED = {
    "vocab_size": 512, "model_dim": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2.0,
    "train_seq_len": 64, "train_batch_tokens": 2048, "grad_accum": 1, "iterations": 100_000, "warmup_steps": 5,
    "log_every": 1, "ema_decay": 0.95, "seed": 3, "max_wallclock_seconds": CAP_SECONDS, "compile": False,
}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_cap_stops_the_run_and_resume_does_not_retrain(tmp_path, small_dataset):
    cfg = config_from_dict(TrainConfig, CAPPED)
    out = tmp_path / "run"
    summary = run_train(TrainRun(cfg=cfg, data=small_dataset, out=out))
    steps = summary["step"]
    assert summary["stopped"] == "wallclock" and 1 <= steps < cfg.iterations
    records = _records(out)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))  # log_every 1: one record per step taken
    # It stops after the first step that brings training time to the cap, never one step later.
    before_last = train[-2]["elapsed_s"] if steps > 1 else 0.0
    assert before_last < CAP_SECONDS <= train[-1]["elapsed_s"] == summary["elapsed_seconds"]
    # Under a cap the warm-down runs on time: the last step's rate is at most the linear decay from
    # 1 - warmdown_frac of the time to 0 at the cap, taken where that step started.
    assert train[-1]["progress"] == 1.0
    assert train[-1]["lr_mult"] <= (1.0 - before_last / CAP_SECONDS) / cfg.warmdown_frac + 1e-9
    assert records[-1] == {"kind": "end", **summary}
    ckpt_path = out / "ckpt.safetensors"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.step == steps and ckpt.elapsed_seconds == summary["elapsed_seconds"]
    before = _tensors(ckpt_path)

    # --resume of a run that spent its time budget takes no step and leaves every tensor as it was.
    resumed = run_train(TrainRun(cfg=cfg, data=small_dataset, out=out, resume=True))
    assert resumed["stopped"] == "wallclock" and resumed["step"] == steps
    assert resumed["elapsed_seconds"] == summary["elapsed_seconds"] and resumed["val_bpb"] == summary["val_bpb"]
    assert [r for r in _records(out) if r["kind"] == "train"] == train
    after = _tensors(ckpt_path)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key

    # ema-finalize takes the capped checkpoint: the model file holds its EMA weights.
    final = tmp_path / "final.safetensors"
    run_ema_finalize(EmaFinalizeConfig(checkpoint=ckpt_path, out=final))
    weights = load_weights(final)
    assert weights.kind == "ema"
    assert weights.state.keys() == {k.removeprefix("ema.") for k in before if k.startswith("ema.")}
    for name, tensor in weights.state.items():
        assert torch.equal(tensor, before[f"ema.{name}"]), name
