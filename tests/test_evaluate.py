"""The eval stage: golden scores, exact bytes, artifact = model file, torchrun parity, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from cli_helpers import assert_clean_error, golfctl
from golfctl.dataset import open_dataset
from golfctl.weights import load_weights, save_model_file
from golfctl.ttt import TTTConfig
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.evaluate import EvalConfig, run_eval
from stages.quantize import QuantizeConfig, run_quantize

FAST_TTT = TTTConfig(chunk_tokens=2048, epochs=1, batch_seqs=8)
FAST = dict(stride=16, batch_seqs=16, ttt=True, ttt_config=FAST_TTT)


@pytest.fixture(scope="module")
def model_and_artifact(tmp_path_factory, trained_run, small_dataset):
    folder = tmp_path_factory.mktemp("eval_inputs")
    run_ema_finalize(EmaFinalizeConfig(checkpoint=trained_run / "ckpt.safetensors", out=folder / "final.safetensors"))
    run_quantize(QuantizeConfig(model=folder / "final.safetensors", data=small_dataset, out=folder / "artifact.bin",
                                calib_batches=2))
    # The artifact's weights as a plain model file, for the artifact-vs-model comparison.
    dequantized = load_weights(folder / "artifact.bin")
    save_model_file(folder / "dequantized.safetensors", dequantized, provenance={})
    return folder


def test_golden_scores_and_exact_bytes(tmp_path, model_and_artifact, small_dataset, golden):
    report = run_eval(EvalConfig(model=model_and_artifact / "artifact.bin", data=small_dataset,
                                 out=tmp_path / "eval.json", **FAST))
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(json.dumps(report))
    results = report["results"]
    val = open_dataset(small_dataset).splits["val"]
    for name in ("plain", "sliding", "ttt"):
        assert results[name]["bytes"] == val.bytes, name
        assert results[name]["tokens"] == val.tokens - 1, name
    chunks = results["ttt"]["chunks"]
    assert sum(c["tokens"] for c in chunks) == val.tokens - 1 and len(chunks) == 4
    assert chunks[0]["nll_sum"] > 0
    # sliding, split by TTT's chunks: the same targets per chunk, and chunk 0 is scored by both
    # before any update, in the same batches
    sliding = results["sliding"]["chunks"]
    assert [(c["tokens"], c["bytes"]) for c in sliding] == [(c["tokens"], c["bytes"]) for c in chunks]
    assert sliding[0]["nll_sum"] == chunks[0]["nll_sum"]
    assert sum(c["nll_sum"] for c in sliding) == pytest.approx(results["sliding"]["val_loss"] * (val.tokens - 1),
                                                               rel=1e-12)
    golden("eval_scores.json", {"about": "eval of the fixture artifact with FAST settings on small_dataset",
                                "results": {name: {key: round(results[name][key], 7) if key.startswith("val_") else
                                                   results[name][key] for key in ("val_loss", "val_bpb", "tokens", "bytes")}
                                            for name in ("plain", "sliding", "ttt")}}, tolerance=1e-5)
    assert report["format"] == "golfctl.eval" and report["version"] == 1
    assert set(report["inputs"]) >= {"model_sha256", "dataset", "tokenizer_sha256"}


def test_ttt_with_zero_epochs_equals_sliding(tmp_path, model_and_artifact, small_dataset):
    report = run_eval(EvalConfig(model=model_and_artifact / "final.safetensors", data=small_dataset,
                                 out=tmp_path / "eval.json", plain=False, **{**FAST, "ttt_config": dataclasses.replace(FAST_TTT, epochs=0)}))
    assert report["results"]["ttt"]["val_loss"] == pytest.approx(report["results"]["sliding"]["val_loss"], abs=1e-12)
    assert report["results"]["ttt"]["chunks"] == report["results"]["sliding"]["chunks"]
    alone = run_eval(EvalConfig(model=model_and_artifact / "final.safetensors", data=small_dataset,
                                out=tmp_path / "sliding.json", plain=False, **{**FAST, "ttt": False}))
    assert "chunks" not in alone["results"]["sliding"]  # chunks are TTT's: without it, one plan
    assert alone["results"]["sliding"]["val_loss"] == pytest.approx(report["results"]["sliding"]["val_loss"],
                                                                      rel=1e-12)


def test_artifact_equals_its_dequantized_model_file(tmp_path, model_and_artifact, small_dataset):
    scores = {}
    for name in ("artifact.bin", "dequantized.safetensors"):
        report = run_eval(EvalConfig(model=model_and_artifact / name, data=small_dataset,
                                     out=tmp_path / f"{name}.json", **FAST))
        scores[name] = {m: r["val_loss"] for m, r in report["results"].items()}
    assert scores["artifact.bin"] == scores["dequantized.safetensors"]


def test_two_ranks_match_one(tmp_path, model_and_artifact, small_dataset):
    one = run_eval(EvalConfig(model=model_and_artifact / "final.safetensors", data=small_dataset,
                              out=tmp_path / "one.json", **FAST))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "golfctl",
            "eval", model_and_artifact / "final.safetensors", "--data", small_dataset, "--out", tmp_path / "two.json",
            "--stride", 16, "--batch-seqs", 16, "--ttt", "--ttt-chunk-tokens", 2048, "--ttt-epochs", 1,
            "--ttt-batch-seqs", 8]
    result = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["settings"]["world_size"] == 2
    for name in ("plain", "sliding", "ttt"):
        assert two["results"][name]["bytes"] == one["results"][name]["bytes"]
        assert two["results"][name]["val_loss"] == pytest.approx(one["results"][name]["val_loss"], rel=1e-5), name


def test_bad_input(tmp_path, model_and_artifact, small_dataset, shakespeare_dataset):
    model = model_and_artifact / "final.safetensors"

    def error(*args):
        return assert_clean_error(golfctl("eval", *args, "--out", tmp_path / "eval.json"))

    assert "vocab" in error(model, "--data", shakespeare_dataset)
    assert "--stride" in error(model, "--data", small_dataset, "--stride", 100, "--seq-len", 64)
    no_val = tmp_path / "no_val"
    no_val.mkdir()
    for shard in small_dataset.glob("fineweb_train_*.bin"):
        (no_val / shard.name).write_bytes(shard.read_bytes())
    assert "validation" in error(model, "--data", no_val, "--tokenizer", small_dataset / "tokenizer.model")
    raw = bytearray((model_and_artifact / "artifact.bin").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "bad.bin").write_bytes(bytes(raw))
    assert "corrupt" in error(tmp_path / "bad.bin", "--data", small_dataset)
    assert not (tmp_path / "eval.json").exists()


def test_every_stage_reports_the_same_plain_score(tmp_path, trained_run, small_dataset):
    """One plain policy: train's final validation, ema-finalize --compare, quantize --eval and
    eval --no-sliding score the same targets and bytes and agree on val_bpb."""
    trained = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    final_val = [r for r in trained if r["kind"] == "val"][-1]
    compared = run_ema_finalize(EmaFinalizeConfig(checkpoint=trained_run / "ckpt.safetensors", raw=True,
                                                  out=tmp_path / "raw.safetensors", compare=True, data=small_dataset))
    quantized = run_quantize(QuantizeConfig(model=tmp_path / "raw.safetensors", data=small_dataset,
                                            out=tmp_path / "artifact.bin", calib_batches=2, evaluate=True))

    def plain(model):
        report = run_eval(EvalConfig(model=model, data=small_dataset, out=tmp_path / "eval.json", sliding=False))
        return report["results"]["plain"]

    raw, artifact = plain(tmp_path / "raw.safetensors"), plain(tmp_path / "artifact.bin")
    val = open_dataset(small_dataset).splits["val"]
    assert (final_val["tokens"], final_val["bytes"]) == (raw["tokens"], raw["bytes"]) == (val.tokens - 1, val.bytes)
    for got, want in [(final_val["val_bpb"], raw["val_bpb"]), (compared["raw"]["val_bpb"], raw["val_bpb"]),
                      (quantized["val_bpb_unquantized"], raw["val_bpb"]),
                      (quantized["val_bpb_quantized"], artifact["val_bpb"])]:
        assert got == pytest.approx(want, rel=1e-6)
