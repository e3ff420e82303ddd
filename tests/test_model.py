"""The GPT: parameter counts, wiring options, layer sequences, U-Net skips at any depth, causality, losses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from golfctl.config import ModelConfig, TrainConfig, preset_names, resolve_config
from golfctl.model import GPT, layer_sequence, model_flops_per_token, parameter_groups, skip_rows

# head_dim 8, GQA 4 query heads over 2 KV heads, MLP hidden 64
TINY = ModelConfig(vocab_size=64, model_dim=32, num_layers=4, num_heads=4, num_kv_heads=2, mlp_mult=2.0)
VARIANTS = {
    "mha_plain": dict(num_kv_heads=4, unet_skips=False),
    "unet": dict(),
    "unet_odd_depth": dict(num_layers=3),  # 3 applications: one skip, the last block gets none
    "parallel": dict(parallel_start=2),
    "whole_stack_loops": dict(num_loops=2),
    "range_loops": dict(loop_start=1, loop_end=2, num_loops=3),
    "eval_loops_larger": dict(loop_start=1, loop_end=2, num_loops=2, eval_loops=4),
    "partial_rope": dict(rope_dims=4),
    "leaky_relu2": dict(mlp_activation="leaky_relu2"),
    "record_like": dict(num_layers=5, mlp_activation="leaky_relu2", rope_dims=4, parallel_start=3,
                        loop_start=1, loop_end=2, num_loops=2),
    "seed_like": dict(num_layers=3, num_kv_heads=1, parallel_start=0, num_loops=2, eval_loops=4, unet_skips=False),
}
B, T = 2, 16


def tiny(**overrides) -> ModelConfig:
    cfg = dataclasses.replace(TINY, **overrides)
    assert not cfg.problems(), cfg.problems()
    return cfg


def expected_param_count(c: ModelConfig) -> int:
    """Parameters from the config alone, written out independently of the model code."""
    d = c.model_dim
    head_dim = d // c.num_heads
    kv = c.num_kv_heads * head_dim
    hidden = int(c.mlp_mult * d)
    block = (d * d  # c_q
             + 2 * d * kv  # c_k, c_v
             + d * d  # attention proj
             + d * hidden + hidden * d  # fc, MLP proj
             + c.num_heads  # q_gain
             + d + d  # attn_scale, mlp_scale
             + 2 * d)  # resid_mix
    skips = 0
    if c.unet_skips:
        looped = c.num_layers if c.loop_start == -1 else c.loop_end - c.loop_start + 1

        def applications(loops: int) -> int:
            return c.num_layers + (loops - 1) * looped

        skips = applications(c.num_loops) // 2  # the training depth's pairs; eval_loops is no shape
    skip_tensors = 2 if c.skip_gates else 1  # skip_weights, and skip_gates of the same shape
    gates = (c.num_layers * c.num_heads * c.gate_window if c.attn_gate else 0) + (
        c.gate_window + 1 if c.smear_gate else 0)  # per-head output gates; the smear's W and λ
    lanes = 6 * c.num_layers if c.two_lane_start != -1 else 0  # residual (L, 2) and post (L, 2, 2) lane scales
    return c.vocab_size * d + c.num_layers * block + skip_tensors * skips * d + gates + lanes


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rms(t: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm written out (eps as F.rms_norm's default)."""
    return t / t.pow(2).mean(-1, keepdim=True).add(torch.finfo(t.dtype).eps).sqrt()


def perturbed(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A model whose zero-init projections and unit gains are moved off their symmetric start."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(cfg: ModelConfig, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("name", preset_names())
def test_preset_parameter_count(name):
    cfg = resolve_config(TrainConfig, name).model_config()
    model = GPT(cfg)
    assert count(model) == expected_param_count(cfg)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}, "RoPE cache leaked into state_dict"


def test_baseline_matches_the_challenge_count():
    """The challenge's naive baseline logs model_params:17059912."""
    assert count(GPT(resolve_config(TrainConfig, "baseline").model_config())) == 17_059_912


def test_tiny_preset_runs():
    cfg = resolve_config(TrainConfig, "tiny").model_config()
    x, y = batch(cfg)
    assert torch.isfinite(GPT(cfg)(x, y))


def test_checkpoint_keys_and_init():
    cfg = tiny(loop_start=1, loop_end=2, num_loops=2, eval_loops=4)  # 6 applications in training: 3 skips
    model = GPT(cfg)
    names = {n for n, _ in model.named_parameters()}
    for key in ("tok_emb.weight", "skip_weights", "blocks.0.attn.c_q.weight", "blocks.0.attn.c_k.weight",
                "blocks.0.attn.c_v.weight", "blocks.0.attn.proj.weight", "blocks.0.attn.q_gain",
                "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "blocks.0.attn_scale", "blocks.0.mlp_scale",
                "blocks.0.resid_mix"):
        assert key in names, key
    assert model.skip_weights.shape == (3, cfg.model_dim)
    block = model.blocks[0]
    assert torch.equal(block.resid_mix, torch.stack((torch.ones(32), torch.zeros(32))))
    assert torch.equal(block.attn.q_gain, torch.full((4,), cfg.qk_gain_init))
    assert not block.attn.proj.weight.any() and not block.mlp.proj.weight.any()
    assert block.attn.c_k.weight.shape == (cfg.num_kv_heads * cfg.head_dim, cfg.model_dim)
    assert abs(model.tok_emb.weight.std().item() - cfg.tied_embed_init_std) < 0.1 * cfg.tied_embed_init_std
    assert "skip_weights" not in {n for n, _ in GPT(tiny(unet_skips=False)).named_parameters()}


def test_layer_sequence_examples():
    assert layer_sequence(tiny(num_layers=3), 1) == [0, 1, 2]
    assert layer_sequence(tiny(num_layers=3), 2) == [0, 1, 2, 0, 1, 2]
    assert layer_sequence(tiny(num_layers=5, loop_start=1, loop_end=2), 3) == [0, 1, 2, 1, 2, 1, 2, 3, 4]
    assert layer_sequence(tiny(num_layers=5, loop_start=1, loop_end=2), 1) == [0, 1, 2, 3, 4]
    assert layer_sequence(tiny(num_layers=4, loop_start=0, loop_end=0), 3) == [0, 0, 0, 1, 2, 3]
    assert layer_sequence(tiny(num_layers=4, loop_start=3, loop_end=3), 2) == [0, 1, 2, 3, 3]
    record = resolve_config(TrainConfig, "record").model_config()
    assert layer_sequence(record, 2) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError):
        layer_sequence(TINY, 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_forward_backward(variant):
    cfg = tiny(**VARIANTS[variant])
    assert count(GPT(cfg)) == expected_param_count(cfg)
    x, y = batch(cfg)

    model = GPT(cfg)  # at init: zero-init projections leave some gradients exactly zero
    logits = model(x)
    assert logits.shape == (B, T, cfg.vocab_size) and logits.dtype == torch.float32
    assert logits.abs().max() <= cfg.logit_softcap
    loss = model(x, y)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    # off the symmetric start, every parameter the forward uses gets a gradient; from the
    # training depth on, every skip weight is used
    model = perturbed(cfg)
    most_loops = max(cfg.num_loops, cfg.resolved_eval_loops)
    model(x, y, loops=most_loops).backward()
    for name, p in model.named_parameters():
        per_row = name.endswith(("skip_weights", "resid_mix"))  # each row is a separate gate
        rows = p.grad.reshape(p.shape[0] if per_row else 1, -1)
        assert (rows != 0).any(dim=-1).all(), f"{name} has a zero gradient (row)"

    if most_loops > 1:
        with torch.no_grad():
            one, trained, most = (model(x, loops=n) for n in (1, cfg.num_loops, most_loops))
        assert not torch.allclose(one, most), "the loop count does not change the output"
        if cfg.num_loops > 1:
            assert not torch.allclose(one, trained)


@pytest.mark.parametrize("loops, used", [(1, [True, True, False]), (2, [True, True, True]), (4, [True, True, True])])
def test_skip_weight_rows_used_per_loop_count(loops, used):
    cfg = tiny(loop_start=1, loop_end=2, num_loops=2)  # pairs: 2 at loops=1, 3 at 2, 5 wanted at 4 (3 rows)
    model = perturbed(cfg)
    x, y = batch(cfg)
    model(x, y, loops=loops).backward()
    assert (model.skip_weights.grad != 0).any(dim=-1).tolist() == used


def test_skip_rows_depend_on_the_architecture_only():
    base = tiny(loop_start=1, loop_end=2, num_loops=2)
    assert skip_rows(base) == 3
    assert {skip_rows(dataclasses.replace(base, eval_loops=n)) for n in (0, 1, 2, 4, 9)} == {3}
    assert skip_rows(dataclasses.replace(base, num_loops=4)) == 5
    assert skip_rows(dataclasses.replace(base, unet_skips=False)) == 0


@pytest.mark.parametrize("loops", [1, 2, 3, 5])
def test_unet_skips_pair_the_innermost_applications_in_reverse(loops):
    """Decoder application half+j reads encoder application half-1-j through row j, for j < min(half, rows)."""
    cfg = tiny(num_layers=5, loop_start=1, loop_end=2, num_loops=2)  # 7 applications in training: 3 rows
    model = perturbed(cfg)
    calls = []  # (block input, block output) per application, in order
    for block in model.blocks:
        block.register_forward_hook(lambda mod, args, out: calls.append((args[0], out)))
    x, _ = batch(cfg)
    with torch.no_grad():
        model(x, loops=loops)
    half = len(calls) // 2
    pairs = min(half, 3)
    for i in range(1, len(calls)):
        j = i - half
        skip = model.skip_weights[j] * calls[half - 1 - j][1] if 0 <= j < pairs else 0
        torch.testing.assert_close(calls[i][0], calls[i - 1][1] + skip, rtol=0, atol=0)


def test_state_dict_loads_across_eval_loops_and_scores_deeper():
    """eval_loops is an evaluation setting: a state dict saved under one loads under another and
    scores at loop counts beyond num_loops (more U-Net pairs than skip rows)."""
    trained = perturbed(tiny(loop_start=1, loop_end=2, num_loops=2, eval_loops=0))
    evaluated = GPT(tiny(loop_start=1, loop_end=2, num_loops=2, eval_loops=6))
    shapes = {k: v.shape for k, v in trained.state_dict().items()}
    assert {k: v.shape for k, v in evaluated.state_dict().items()} == shapes
    evaluated.load_state_dict(trained.state_dict())
    x, y = batch(evaluated.cfg)
    with torch.no_grad():
        for loops in (evaluated.cfg.resolved_eval_loops, 9):
            assert torch.isfinite(evaluated(x, y, loops=loops))
            torch.testing.assert_close(evaluated(x, loops=loops), trained(x, loops=loops), rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["relu2", "leaky_relu2"])
def test_block_internals_and_head(activation):
    """x0 is the normalized embedding, resid_mix mixes it in, the MLP squares its activation, the head is tied."""
    cfg = tiny(mlp_activation=activation, unet_skips=False)
    model = perturbed(cfg)
    seen = {}
    model.blocks[1].register_forward_hook(lambda mod, args, out: seen.update(block=args, out=out))
    model.blocks[1].attn.register_forward_hook(lambda mod, args, out: seen.update(attn_in=args[0]))
    model.blocks[1].mlp.register_forward_hook(lambda mod, args, out: seen.update(mlp=(args[0], out)))
    model.blocks[-1].register_forward_hook(lambda mod, args, out: seen.update(last=out))
    x, _ = batch(cfg)
    with torch.no_grad():
        logits = model(x)
        block = model.blocks[1]
        x_in, x0 = seen["block"][:2]
        torch.testing.assert_close(x0, rms(model.tok_emb.weight[x]))
        torch.testing.assert_close(seen["attn_in"], rms(block.resid_mix[0] * x_in + block.resid_mix[1] * x0))
        mlp_in, mlp_out = seen["mlp"]
        h = mlp_in @ block.mlp.fc.weight.T
        h = torch.where(h > 0, h, 0.5 * h if activation == "leaky_relu2" else 0 * h)
        torch.testing.assert_close(mlp_out, h.square() @ block.mlp.proj.weight.T)
        c = cfg.logit_softcap
        torch.testing.assert_close(logits, c * torch.tanh(rms(seen["last"]) @ model.tok_emb.weight.T / c))


@pytest.mark.parametrize("parallel_start", [-1, 0, 2])
def test_parallel_blocks_feed_attn_and_mlp_the_same_input(parallel_start):
    cfg = tiny(parallel_start=parallel_start)
    model = perturbed(cfg)
    inputs = {}
    for i, block in enumerate(model.blocks):
        for part in ("attn", "mlp"):
            getattr(block, part).register_forward_hook(
                lambda mod, args, out, key=(i, part): inputs.setdefault(key, args[0]))
    x, _ = batch(cfg)
    with torch.no_grad():
        model(x)
    for i in range(cfg.num_layers):
        same = torch.equal(inputs[i, "attn"], inputs[i, "mlp"])
        assert same == (0 <= parallel_start <= i), f"block {i}"


@pytest.mark.parametrize("variant", ["unet", "record_like", "seed_like"])
def test_causal(variant):
    cfg = tiny(**VARIANTS[variant])
    model = perturbed(cfg)
    x, _ = batch(cfg)
    with torch.no_grad():
        base = model(x)
        for t in (0, 5, T - 2):
            changed = x.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.arange(T - t - 1)) % cfg.vocab_size
            out = model(changed)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-5)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_reduction_none_matches_mean():
    cfg = tiny(**VARIANTS["record_like"])
    model = perturbed(cfg)
    x, y = batch(cfg)
    with torch.no_grad():
        per_token = model(x, y, reduction="none")
        mean = model(x, y)
        logits = model(x)
    assert per_token.shape == (B, T) and per_token.dtype == torch.float32
    torch.testing.assert_close(per_token.mean(), mean)
    torch.testing.assert_close(per_token, torch.nn.functional.cross_entropy(logits.transpose(1, 2), y,
                                                                            reduction="none"))


def test_rope_dims():
    """rope_dims = 0 rotates the whole head, the same as rope_dims = head_dim; fewer dims differ."""
    x, _ = batch(TINY)
    full, partial = perturbed(tiny(rope_dims=0)), perturbed(tiny(rope_dims=4))
    with torch.no_grad():
        assert not torch.allclose(full(x), partial(x))
        assert torch.allclose(full(x), perturbed(tiny(rope_dims=TINY.head_dim))(x))


def test_bf16_autocast_on_cpu():
    cfg = tiny(**VARIANTS["record_like"])
    model = perturbed(cfg)
    x, y = batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = model(x, y)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_under_inference_mode_then_train():
    """The RoPE cache filled during evaluation must still serve a training step."""
    model = GPT(TINY)
    x, y = batch(TINY)
    with torch.inference_mode():
        model(x, y)
    model(x, y).backward()


@pytest.mark.parametrize("variant", ["mha_plain", "range_loops"])
def test_model_flops_per_token(variant):
    cfg = tiny(**VARIANTS[variant])
    model = GPT(cfg)
    per_application = sum(p.numel() for _, p in parameter_groups(model)["matrix"]) / cfg.num_layers
    for loops in (1, cfg.num_loops):
        applications = len(layer_sequence(cfg, loops))
        expected = (6 * (applications * per_application + cfg.vocab_size * cfg.model_dim)
                    + 12 * applications * cfg.model_dim * 64)
        assert model_flops_per_token(cfg, 64, loops) == pytest.approx(expected)
