"""LQER and the 2026-04-27 record's quantization: the low-rank correction against an independent SVD, the
top-k choice, and the quantize stage with per-role clips, int7 embedding, int8 gate rows and LQER."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from golfctl.artifact import LQER_SUFFIX, Float16Tensor, QuantizedTensor, read_artifact
from golfctl.config import TrainConfig, config_from_dict
from golfctl.gptq import quantize_rtn, sdclip_scales
from golfctl.lqer import largest_errors, low_rank_factors, lqer_correction
from golfctl.model import GPT
from golfctl.weights import Weights, build_model, load_weights, save_model_file
from stages.quantize import QuantizeConfig, run_quantize


def _quantization_error(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """E = W − Ŵ of an int6 RTN grid on a matrix with a few strong directions (what LQER meets)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen) * 0.02 + torch.randn(rows, 3, generator=gen) @ torch.randn(
        3, cols, generator=gen) * 0.05
    s = sdclip_scales(W, 6, 3.0)  # a coarse clip: large, structured errors
    return W - quantize_rtn(W, s, 6).float() * s[:, None]


@pytest.mark.parametrize("shape,rank", [((96, 64), 4), ((40, 130), 3), ((5, 64), 8)])
def test_low_rank_factors_are_the_truncated_svd(shape, rank):
    E = _quantization_error(*shape)
    A, B = low_rank_factors(E, rank)
    r = min(rank, min(shape))
    assert A.shape == (shape[0], r) and B.shape == (r, shape[1])
    U, S, Vt = np.linalg.svd(E.double().numpy(), full_matrices=False)  # an independent float64 SVD
    np.testing.assert_allclose((A @ B).double().numpy(), (U[:, :r] * S[:r]) @ Vt[:r], atol=1e-5)
    # Eckart–Young: what remains is exactly the discarded singular values
    assert float(torch.linalg.norm(E - A @ B)) == pytest.approx(float(np.sqrt((S[r:] ** 2).sum())), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(B.double().numpy() @ B.double().numpy().T, np.eye(r), atol=1e-5)  # B = V_rᵀ


def _grid(X: np.ndarray, group: int, low: int, high: int, divisor: float) -> np.ndarray:
    """The record's factor grid, dequantized: s = fp16(max|g|/divisor), rint(x/s) clipped, times s."""
    g = X.reshape(-1, group)
    s = (np.maximum(np.abs(g).max(axis=1), np.float32(1e-10)) / np.float32(divisor)).astype(np.float16)
    s = s.astype(np.float32)[:, None]
    return (np.clip(np.rint(g / s), low, high) * s).reshape(X.shape)


def test_asym_correction_is_int2_a_and_int4_b_groups_of_64_and_reduces_the_error():
    E = _quantization_error(256, 128, seed=1)
    c = lqer_correction(E, rank=4, asym=True, group=64)
    A, B = (t.numpy() for t in low_rank_factors(E, 4))
    assert (c.a.bits, c.a.group, c.a.symmetric, c.b.bits, c.b.group, c.b.symmetric) == (2, 256 * 4, False, 4, 64, False)
    assert c.a.scales.numel() == 1 and c.b.scales.numel() == 4 * 128 // 64
    assert -2 <= int(c.a.q.min()) and int(c.a.q.max()) <= 1 and -8 <= int(c.b.q.min()) and int(c.b.q.max()) <= 7
    np.testing.assert_array_equal(c.a.dequantize().numpy(), _grid(A, A.size, -2, 1, 1.5))
    np.testing.assert_array_equal(c.b.dequantize().numpy(), _grid(B, 64, -8, 7, 7.5))
    expected = torch.from_numpy(_grid(A, A.size, -2, 1, 1.5)) @ torch.from_numpy(_grid(B, 64, -8, 7, 7.5))
    assert torch.equal(c.matrix(), expected)
    # it reduces the error, by less than the unquantized rank-4 factors (the best any rank-4 A·B can do)
    before, after, best = (float(torch.linalg.norm(E - D)) for D in (0, c.matrix(), torch.from_numpy(A @ B)))
    assert best < after < before, (best, after, before)


def test_symmetric_fallback_when_the_group_does_not_divide_b():
    """The record packs symmetric lqer_factor_bits per row when r·cols is no multiple of the group (or asym is off)."""
    E = _quantization_error(48, 50, seed=2)  # 4·50 = 200 values of B: not a multiple of 64
    A, B = (t.numpy() for t in low_rank_factors(E, 4))
    for c in (lqer_correction(E, 4, asym=True, group=64, factor_bits=4), lqer_correction(E, 4, asym=False)):
        assert (c.a.bits, c.a.group, c.a.symmetric, c.b.group) == (4, 4, True, 50)
        np.testing.assert_array_equal(c.a.dequantize().numpy(), _grid(A, 4, -7, 7, 7.0))
        np.testing.assert_array_equal(c.b.dequantize().numpy(), _grid(B, 50, -7, 7, 7.0))
        assert float((E - c.matrix()).norm()) < float(E.norm())


def test_largest_errors_by_frobenius_norm_ties_in_order():
    norms = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 5.0, "e": 0.5}
    assert largest_errors(norms, 3) == ["b", "d", "c"]
    assert largest_errors(norms, 0) == [] and largest_errors(norms, 9) == ["b", "d", "c", "a", "e"]


# The quantize stage with the record's settings, on a small random model with sparse attention gates.

FRONTIER_QUANTIZE = dict(embed_bits=7, embed_clip_sigmas=14.0, mlp_clip_sigmas=11.5, attn_clip_sigmas=13.0,
                         clip_sigmas=12.85, gate_bits=8, lqer_top_k=3, lqer_rank=4, lqer_asym=True, lqer_group=64,
                         lqer_factor_bits=4, calib_batches=2)


@pytest.fixture(scope="module")
def gated_model(tmp_path_factory):
    cfg = config_from_dict(TrainConfig, {"vocab_size": 512, "model_dim": 64, "num_layers": 2, "num_heads": 2,
                                         "num_kv_heads": 1, "mlp_mult": 2.0, "train_seq_len": 64, "attn_gate": True,
                                         "compile": False})
    torch.manual_seed(0)
    names = GPT(cfg.model_config()).state_dict()
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen) * (0.5 if v.ndim < 2 else 0.05) for k, v in names.items()}
    path = tmp_path_factory.mktemp("gated") / "final.safetensors"
    save_model_file(path, Weights(cfg, state, "raw", "test weights", "0" * 64), provenance={})
    return path


def test_quantize_with_the_04_27_records_settings(tmp_path, gated_model, small_dataset):
    out = tmp_path / "artifact.bin"
    summary = run_quantize(QuantizeConfig(model=gated_model, data=small_dataset, out=out, **FRONTIER_QUANTIZE))
    art, weights = read_artifact(out), load_weights(gated_model)
    assert art.version == 3
    gates = [n for n in weights.state if n.endswith(".out_gate")]
    assert gates and all(isinstance(art.tensors[n], QuantizedTensor) for n in gates)
    for name, W in weights.state.items():
        t = art.tensors[name]
        if name in gates:  # int8 rows: s = fp16(max|row|/127), q = rint(W/s)
            s = (W.abs().amax(dim=1) / 127).half()
            assert t.bits == 8 and np.array_equal(t.scales, s.numpy())
            np.testing.assert_array_equal(t.q, np.clip(np.rint(W.numpy() / s.float().numpy()[:, None]), -127, 127))
        elif isinstance(t, QuantizedTensor):  # the per-role clips and the int7 embedding
            bits, k = (7, 14.0) if name == "tok_emb.weight" else (6, 11.5 if ".mlp." in name else 13.0)
            assert t.bits == bits and np.array_equal(t.scales, sdclip_scales(W, bits, k).half().numpy()), name
        else:
            assert isinstance(t, Float16Tensor), name
    # LQER on the three matrices with the largest ‖W − q·s‖_F, computed here from the artifact
    norms = {n: float(np.linalg.norm(weights.state[n].numpy() - t.q * t.scales.astype(np.float32)[:, None]))
             for n, t in art.tensors.items() if isinstance(t, QuantizedTensor) and n not in gates}
    top3 = sorted(norms, key=norms.get, reverse=True)[:3]
    assert list(art.corrections) == top3
    report = json.loads((tmp_path / "artifact.quantize.json").read_text())["tensors"]
    state = load_weights(out).state
    for name in top3:
        line = report[name + LQER_SUFFIX]
        assert (line["group"], line["target"], line["rank"], line["bits"]) == ("lqer", name, 4, "2/4")
        assert line["error_norm"] == pytest.approx(norms[name], rel=1e-5)
        t = art.tensors[name]
        corrected = float(torch.linalg.norm(weights.state[name] - state[name]))
        assert corrected < norms[name] and line["weight_error"] < report[name]["weight_error"]
        assert line["weight_error"] == pytest.approx(corrected / float(weights.state[name].norm()), rel=1e-4)
        assert not np.array_equal(state[name].numpy(), t.q * t.scales.astype(np.float32)[:, None])
    for name in gates:  # the gate logits' error, through the leading block of c_q's Hessian (same input x)
        assert report[name]["group"] == "gate" and 0 < report[name]["output_error"] < 0.05
    assert summary["tensors"] == report
    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(build_model(load_weights(out), torch.device("cpu"))(x)).all()


def test_gate_bits_zero_keeps_gates_float16_and_no_lqer_writes_version_2(tmp_path, gated_model, small_dataset):
    out = tmp_path / "artifact.bin"
    run_quantize(QuantizeConfig(model=gated_model, data=small_dataset, out=out, gate_bits=0, calib_batches=2))
    art = read_artifact(out)
    assert art.version == 2 and not art.corrections
    assert all(isinstance(t, Float16Tensor) for n, t in art.tensors.items() if n.endswith(".out_gate"))
