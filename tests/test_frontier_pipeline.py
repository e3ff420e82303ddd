"""The `frontier` preset scaled down through --set, end to end on CPU on a CaseOps dataset: it
trains, resumes bit-exactly, quantizes with the record's recipe (int7 embedding, per-role clips,
int8 gate rows, LQER) and evaluates (sliding, score-first TTT and the record's packed eval), every
score counting the original text's bytes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from caseops_docs import VAL_DOCS
from cli_helpers import golfctl
from safetensors.torch import load_file

from golfctl.artifact import QuantizedTensor, read_artifact
from golfctl.config import TrainConfig, resolve_config
from golfctl.model import GATE, GPT, parameter_roles
from golfctl.packed import PackedConfig
from golfctl.ttt import TTTConfig
from stages.evaluate import EvalConfig, run_eval
from stages.quantize import QuantizeConfig, run_quantize
from stages.train import TrainRun, run_train

SCALED = ("vocab_size=384", "model_dim=32", "num_layers=4", "num_heads=4", "num_kv_heads=2", "rope_dims=4",
          "xsa_last_n=4", "loop_start=1", "loop_end=1", "num_loops=2", "two_lane_start=3", "gate_window=6",
          "doc_max_len=32", "train_seq_len=32", "train_batch_tokens=256", "grad_accum=1", "iterations=6",
          "max_wallclock_seconds=0.0", "gptq_reserve_seconds=0.0", "compile=false", "log_every=1", "muon_momentum_warmup_steps=3")
# the record's quantization flags (Makefile FRONTIER_QUANT_ARGS), calibration scaled down
RECIPE = dict(embed_bits=7, embed_clip_sigmas=14.0, mlp_clip_sigmas=11.5, attn_clip_sigmas=13.0, clip_sigmas=12.85,
              gate_bits=8, lqer_top_k=3, lqer_rank=4, lqer_asym=True, lqer_group=64, lqer_factor_bits=4,
              calib_batches=2, calib_batch_seqs=4)


@pytest.fixture(scope="module")
def frontier_run(tmp_path_factory, caseops_dataset):
    """(config, folder of a straight run, folder of a run stopped after 3 steps and resumed)."""
    cfg = resolve_config(TrainConfig, "frontier", overrides=SCALED)
    root = tmp_path_factory.mktemp("frontier")
    run_train(TrainRun(cfg=cfg, data=caseops_dataset, out=root / "straight"))
    run_train(TrainRun(cfg=cfg, data=caseops_dataset, out=root / "split", stop_after_steps=3))
    run_train(TrainRun(cfg=cfg, data=caseops_dataset, out=root / "split", resume=True))
    return cfg, root / "straight", root / "split"


def test_the_scaled_preset_keeps_every_frontier_piece(frontier_run):
    cfg, _, _ = frontier_run
    assert (cfg.smear_gate, cfg.attn_gate, cfg.muon_ns_coeffs, cfg.muon_bf16_momentum, cfg.min_lr_clamp,
            cfg.train_packed_rows) == (True, True, "polar_express", True, True, True)
    assert cfg.train_row_len == 256  # one packed row per micro-batch


def test_resume_is_bit_exact(frontier_run):
    _, straight, split = frontier_run
    a, b = load_file(straight / "ckpt.safetensors"), load_file(split / "ckpt.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_quantize_and_evaluate_with_the_records_recipe(tmp_path, frontier_run, caseops_dataset):
    cfg, straight, _ = frontier_run
    run_quantize(QuantizeConfig(model=straight / "ckpt.safetensors", data=caseops_dataset,
                                out=tmp_path / "artifact.bin", **RECIPE))
    artifact = read_artifact(tmp_path / "artifact.bin")
    roles = parameter_roles(GPT(cfg.model_config()))
    tensors = artifact.tensors
    assert tensors["tok_emb.weight"].bits == 7
    gates = [name for name, role in roles.items() if role is GATE]
    assert gates and all(isinstance(tensors[g], QuantizedTensor) and tensors[g].bits == 8 for g in gates)
    assert len(artifact.corrections) == 3
    shown = golfctl("inspect", tmp_path / "artifact.bin")
    assert shown.returncode == 0 and sum(".lqer" in line for line in shown.stdout.splitlines()) == 3, shown.stderr
    report = run_eval(EvalConfig(model=tmp_path / "artifact.bin", data=caseops_dataset, out=tmp_path / "eval.json",
                                 stride=8, ttt=True, ttt_config=TTTConfig(chunk_tokens=64, epochs=1, batch_seqs=4),
                                 packed=True, packed_config=PackedConfig(batch_tokens=2 * 2 * 32, world_size=2)))
    results = report["results"]
    original_bytes = sum(len(doc.strip().encode("utf-8")) for doc in VAL_DOCS)
    assert {name: results[name]["bytes"] for name in ("plain", "sliding", "ttt")} == dict.fromkeys(
        ("plain", "sliding", "ttt"), original_bytes)
    assert 0 < results["packed"]["bytes"] <= original_bytes
    assert all(0 < r["val_bpb"] < 20 for r in results.values())
