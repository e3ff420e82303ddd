"""Muon, Newton–Schulz, the LR schedule, optimiser checkpoint state and the distributed Muon split."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from golfctl.config import TrainConfig, config_from_dict
from golfctl.errors import UserError
from golfctl.optim import (Muon, build_optimizers, lr_multiplier, muon_momentum, muon_update, newton_schulz5,
                           ns_coefficients)
from ranks import run_ranks


@pytest.mark.parametrize("shape", [(64, 32), (32, 96)])
def test_newton_schulz5_singular_values_near_one(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    X = newton_schulz5(G, steps=5)
    assert X.shape == G.shape
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.5 and s.max() < 1.5, s


def test_muon_decreases_least_squares_loss():
    gen = torch.Generator().manual_seed(0)
    X, W_true = torch.randn(256, 32, generator=gen), torch.randn(16, 32, generator=gen)
    Y = X @ W_true.T
    W = nn.Parameter(torch.zeros(16, 32))
    opt = Muon([W], lr=0.1, momentum=0.9)

    def loss() -> torch.Tensor:
        return ((X @ W.T - Y) ** 2).mean()

    start = loss().item()
    for _ in range(100):  # Muon's step has a fixed size (≈ lr per singular direction): ~60 steps to cover W_true
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.01 * start


def test_muon_weight_decay_shrinks_weights_without_gradient():
    W = nn.Parameter(torch.ones(8, 4))
    W.grad = torch.zeros_like(W)
    Muon([W], lr=0.5, weight_decay=0.1).step()
    torch.testing.assert_close(W.detach(), torch.full((8, 4), 0.95))  # × (1 − lr·wd), no update


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_muon_row_norm_normalises_rows_before_newton_schulz(shape):
    """MuonEq-R in the record's order: unit rows, then NS, then the shape scale sqrt(max(1, rows/cols))."""
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    unit_rows = G / G.norm(dim=1, keepdim=True)
    expected = newton_schulz5(unit_rows, 5) * max(1.0, shape[0] / shape[1]) ** 0.5
    torch.testing.assert_close(muon_update(G, steps=5, row_norm=True), expected, atol=1e-6, rtol=0)
    # so the update ignores each row's scale, which plain Muon does not
    rescaled = G * torch.linspace(0.1, 10.0, shape[0])[:, None]
    torch.testing.assert_close(muon_update(rescaled, steps=5, row_norm=True), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(muon_update(rescaled, steps=5, row_norm=False), muon_update(G, steps=5, row_norm=False),
                              atol=1e-3)


def test_muon_rejects_non_matrix_params():
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(4))], lr=0.1)


def test_lr_multiplier_shape():
    cfg = TrainConfig(warmup_steps=4, warmdown_frac=0.2, min_lr_frac=0.1)
    assert [lr_multiplier(s, 0.0, cfg) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_multiplier(100, 0.5, cfg) == 1.0
    assert lr_multiplier(100, 0.8, cfg) == 1.0  # warm-down starts after 1 − warmdown_frac
    assert lr_multiplier(100, 0.9, cfg) == pytest.approx(0.55)  # halfway from 1.0 to 0.1
    assert lr_multiplier(100, 1.0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(100, 1.5, cfg) == pytest.approx(0.1)  # floor, never below
    assert lr_multiplier(100, 1.0, dataclasses.replace(cfg, min_lr_frac=0.0)) == 0.0
    assert lr_multiplier(100, 1.0, dataclasses.replace(cfg, warmdown_frac=0.0)) == 1.0


def test_lr_multiplier_clamped_floor_is_the_04_27_records():
    """The record's lr_mul: max((1 − p)/0.85, 0.1) once p ≥ 0.15 (its train_gpt.py lines 3355–3360)."""
    cfg = TrainConfig(warmdown_frac=0.85, min_lr_frac=0.1, min_lr_clamp=True)
    for p in (0.0, 0.15, 0.3, 0.5, 0.9, 0.915, 0.95, 1.0):
        expected = max((1.0 - p) / 0.85, 0.1) if p >= 0.15 else 1.0
        assert lr_multiplier(10_000, p, cfg) == pytest.approx(expected, abs=1e-12), p


def test_lr_multiplier_warmdown_follows_progress_not_step():
    cfg = TrainConfig(iterations=1000, warmdown_frac=0.2)
    # Step 100 of 1000, but 90% of the wall-clock budget spent: halfway through the warm-down.
    assert lr_multiplier(100, max(100 / 1000, 0.9), cfg) == pytest.approx(0.5)


def test_muon_momentum_warmup():
    cfg = TrainConfig(muon_momentum_warmup_start=0.85, muon_momentum=0.95, muon_momentum_warmup_steps=10)
    assert muon_momentum(0, cfg) == pytest.approx(0.85)
    assert muon_momentum(5, cfg) == pytest.approx(0.90)
    assert muon_momentum(50, cfg) == pytest.approx(0.95)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 16)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(idx))))

    def groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        named = dict(self.named_parameters())
        return {"embed": [("emb.weight", named["emb.weight"])],
                "matrix": [(k, named[k]) for k in ("fc1.weight", "fc2.weight")],
                "scalar": [(k, named[k]) for k in ("fc1.bias", "fc2.bias")]}


CKPT_CFG = TrainConfig(warmup_steps=2, muon_momentum_warmup_steps=4, grad_clip_norm=1.0, muon_row_norm=True,
                       embed_weight_decay=0.02, scalar_weight_decay=0.01, muon_weight_decay=0.01)


def train_steps(model: Tiny, opts, steps: range, cfg: TrainConfig = CKPT_CFG) -> None:
    for step in steps:
        idx = torch.randint(0, 16, (32,), generator=torch.Generator().manual_seed(step))
        opts.set_schedule(lr_multiplier(step, step / 10, cfg), step)
        loss = nn.functional.cross_entropy(model(idx), (idx + 1) % 16)
        loss.backward()
        opts.clip_grad_norm_(cfg.grad_clip_norm)
        opts.step()
        opts.zero_grad()


def test_state_tensors_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opts = build_optimizers(model.groups(), CKPT_CFG, "cpu")
    train_steps(model, opts, range(3))
    path = tmp_path / "ckpt.safetensors"
    save_file({**opts.state_tensors(), **{f"model.{k}": v for k, v in model.state_dict().items()}}, path)

    loaded = load_file(path)
    resumed = Tiny()
    resumed.load_state_dict({k.removeprefix("model."): v for k, v in loaded.items() if k.startswith("model.")})
    resumed_opts = build_optimizers(resumed.groups(), CKPT_CFG, "cpu")
    resumed_opts.load_state_tensors({k: v for k, v in loaded.items() if k.startswith("optim.")})
    assert loaded["optim.embed.emb.weight.step"].item() == 3
    assert "optim.matrix.fc1.weight.momentum_buffer" in loaded and "optim.matrix.momentum" in loaded

    train_steps(model, opts, range(3, 5))
    train_steps(resumed, resumed_opts, range(3, 5))
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_load_state_tensors_names_bad_keys():
    model = Tiny()
    opts = build_optimizers(model.groups(), CKPT_CFG, "cpu")
    train_steps(model, opts, range(1))
    state = opts.state_tensors()
    del state["optim.scalar.fc2.bias.exp_avg"]
    state["optim.matrix.fc3.weight.momentum_buffer"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"missing.*fc2\.bias\.exp_avg.*unexpected.*fc3\.weight"):
        build_optimizers(Tiny().groups(), CKPT_CFG, "cpu").load_state_tensors(state)


# Distributed: two gloo ranks must produce exactly the single-process Muon step.

DIST_SHAPES = [(16, 8), (8, 24), (12, 12), (20, 4), (6, 10)]  # 5 params: rank 0 owns 0, 2, 4; rank 1 owns 1, 3


def muon_problem() -> tuple[list[nn.Parameter], Muon]:
    gen = torch.Generator().manual_seed(7)
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in DIST_SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params, Muon(params, lr=0.05, momentum=0.9, row_norm=False, weight_decay=0.1)


def muon_rank(out_dir: str, ctx) -> None:
    params, opt = muon_problem()
    opt.step()
    result = {f"param{i}": p.detach() for i, p in enumerate(params)}
    # Every rank keeps every momentum buffer, so rank 0 alone can checkpoint the full state.
    result |= {f"buf{i}": opt.state[p]["momentum_buffer"] for i, p in enumerate(params)}
    save_file(result, f"{out_dir}/rank{ctx.rank}.safetensors")


def test_distributed_muon_matches_single_process(tmp_path):
    params, opt = muon_problem()
    opt.step()
    run_ranks(functools.partial(muon_rank, str(tmp_path)))
    for rank in range(2):
        got = load_file(tmp_path / f"rank{rank}.safetensors")
        for i, p in enumerate(params):
            torch.testing.assert_close(got[f"param{i}"], p.detach(), atol=1e-6, rtol=0)
            torch.testing.assert_close(got[f"buf{i}"], opt.state[p]["momentum_buffer"], atol=1e-6, rtol=0)


# Polar-Express Newton–Schulz and bfloat16 momentum (the 2026-04-27 record's Muon).

# The record's _PE_COEFFS, typed from its train_gpt.py lines 1720-1726.
RECORD_PE_COEFFS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))


def _singular_polynomial(sigma: torch.Tensor, coefficients) -> torch.Tensor:
    for a, b, c in coefficients:
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    return sigma


@pytest.mark.parametrize("schedule", ["quintic", "polar_express"])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_newton_schulz_maps_singular_values_by_its_coefficient_polynomials(schedule, shape):
    """X = U·diag(σ)·Vᵀ → U·diag(p(σ/‖X‖_F))·Vᵀ, p the composition of σ ↦ aσ + bσ³ + cσ⁵ per iteration."""
    gen = torch.Generator().manual_seed(3)
    k = min(shape)
    U = torch.linalg.qr(torch.randn(shape[0], k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(shape[1], k, generator=gen, dtype=torch.float64))[0]
    sigma = torch.logspace(-2.5, 0.0, k, dtype=torch.float64)
    G = U @ torch.diag(sigma) @ V.T
    coefficients = RECORD_PE_COEFFS if schedule == "polar_express" else [(3.4445, -4.7750, 2.0315)] * 5
    expected = U @ torch.diag(_singular_polynomial(sigma / sigma.norm(), coefficients)) @ V.T
    got = newton_schulz5(G.float(), 5, schedule).double()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_polar_express_lands_closer_to_one_and_caps_its_steps():
    sigma = torch.logspace(-3, 0, 1000, dtype=torch.float64)
    pe = _singular_polynomial(sigma, RECORD_PE_COEFFS)
    quintic = _singular_polynomial(sigma, [(3.4445, -4.7750, 2.0315)] * 5)
    assert (pe - 1).abs().max() < 0.15 < (quintic - 1).abs().max()
    assert ns_coefficients("polar_express", 5) == RECORD_PE_COEFFS
    assert ns_coefficients("polar_express", 3) == RECORD_PE_COEFFS[:3]  # the record's _PE_COEFFS[:steps]
    with pytest.raises(ValueError, match="at most 5"):
        ns_coefficients("polar_express", 6)
    with pytest.raises(UserError, match="muon_backend_steps must be at most 5"):
        config_from_dict(TrainConfig, {"muon_ns_coeffs": "polar_express", "muon_backend_steps": 6})
    with pytest.raises(UserError, match="muon_ns_coeffs must be one of"):
        config_from_dict(TrainConfig, {"muon_ns_coeffs": "cubic"})


def test_bf16_momentum_rounds_the_gradient_and_keeps_buffer_and_direction_in_bf16():
    """The record's step: g = bf16(grad); buf ← m·buf + g; d = g + m·buf, all bf16; p ← p − lr·NS(d)."""
    gen = torch.Generator().manual_seed(5)
    W = nn.Parameter(torch.randn(12, 20, generator=gen))
    grads = [torch.randn(12, 20, generator=gen) for _ in range(2)]
    opt = Muon([W], lr=0.1, momentum=0.9, row_norm=True, momentum_dtype=torch.bfloat16, ns_schedule="polar_express")
    buf = torch.zeros(12, 20, dtype=torch.bfloat16)
    for g in grads:
        before = W.detach().clone()
        W.grad = g.clone()
        opt.step()
        g16 = g.to(torch.bfloat16)
        buf = (buf * 0.9).to(torch.bfloat16) + g16  # bf16 tensors: every op rounds to bf16
        direction = g16.add(buf, alpha=0.9)  # the record's Nesterov expression, on bf16 tensors
        assert opt.state[W]["momentum_buffer"].dtype == torch.bfloat16
        assert torch.equal(opt.state[W]["momentum_buffer"], buf)
        expected = before - 0.1 * muon_update(direction, 5, True, "polar_express").float()
        torch.testing.assert_close(W.detach(), expected, atol=1e-6, rtol=0)


def test_build_optimizers_passes_the_frontier_muon_keys():
    model = Tiny()
    cfg = dataclasses.replace(CKPT_CFG, muon_ns_coeffs="polar_express", muon_bf16_momentum=True)
    muon = build_optimizers(model.groups(), cfg, "cpu").optimizers["matrix"]
    assert muon.param_groups[0]["ns_schedule"] == "polar_express" and muon.momentum_dtype == torch.bfloat16
    default = build_optimizers(model.groups(), CKPT_CFG, "cpu").optimizers["matrix"]
    assert default.param_groups[0]["ns_schedule"] == "quintic" and default.momentum_dtype is None
