"""The `record` preset is the 2026-04-09 record run: its size and layer layout as the record's log
prints them, each of its pieces checked against its definition, and a scaled-down copy that
trains, resumes bit-exactly across the switch to looping, quantizes and evaluates on CPU."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from golfctl.config import ModelConfig, TrainConfig, config_from_dict, resolve_config
from golfctl.model import GPT, apply_rotary, parameter_groups, remove_value_direction, unet_layout
from golfctl.optim import build_optimizers, lr_multiplier, muon_momentum
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.evaluate import EvalConfig, run_eval
from stages.quantize import QuantizeConfig, run_quantize
from stages.train import TrainRun, run_train

RECORD = resolve_config(TrainConfig, "record")


def test_size_and_layer_layout_are_the_records_log():
    """`model_params:35944536` and `layer_loop:enabled … encoder:[0, 1, 2, 3, 4, 5, 3, 4]
    decoder:[5, 3, 4, 5, 6, 7, 8, 9, 10]` in all three seed logs; before looping the record runs
    encoder range(5), decoder range(5, 11)."""
    with torch.device("meta"):  # 36M parameters, no memory
        model = GPT(RECORD.model_config())
    assert sum(p.numel() for p in model.parameters()) == 35_944_536
    assert unet_layout(RECORD, 1) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    assert unet_layout(RECORD, RECORD.num_loops) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert model.skip_weights.shape == model.skip_gates.shape == (8, 512)


def test_schedules_are_the_records():
    assert muon_momentum(0, RECORD) == pytest.approx(0.92)
    assert muon_momentum(750, RECORD) == pytest.approx(0.955)
    assert muon_momentum(5000, RECORD) == pytest.approx(0.99)
    assert RECORD.train_seconds == 588.0  # "gptq:reserving 12s, effective=588000ms"
    # flat until 28% of the clock, then linear to 0: scale = (1 - frac) / 0.72
    assert lr_multiplier(100, 0.28, RECORD) == 1.0
    assert lr_multiplier(3000, 0.64, RECORD) == pytest.approx(0.5)
    assert lr_multiplier(4500, 1.0, RECORD) == 0.0


def test_optimizer_groups_get_the_records_rates_and_decays():
    with torch.device("meta"):
        model = GPT(RECORD.model_config())
    optimizers = build_optimizers(parameter_groups(model), RECORD, "meta").optimizers
    settings = {name: (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"])
                for name, opt in optimizers.items()}
    assert settings == {"embed": (0.03, 0.085), "matrix": (0.022, 0.095), "scalar": (0.02, 0.02)}
    assert optimizers["matrix"].param_groups[0]["row_norm"]


def small_model(**changes) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, model_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, rope_dims=16,
                      **changes)
    model = GPT(cfg)
    with torch.no_grad():  # non-zero projections, so every block changes the stream
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return model


def test_xsa_output_is_orthogonal_to_its_own_value_vector():
    gen = torch.Generator().manual_seed(0)
    y, v = torch.randn(2, 8, 5, 16, generator=gen), torch.randn(2, 4, 5, 16, generator=gen)
    out = remove_value_direction(y, v)
    own_v = v.repeat_interleave(2, dim=1)  # query head h reads kv head h // 2
    assert (out * own_v).sum(-1).abs().max() < 1e-5
    # what is removed is the projection on that direction only
    unit = own_v / own_v.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(y - out, (y * unit).sum(-1, keepdim=True) * unit, atol=1e-6, rtol=0)
    # and inside the model: every head's input to the output projection
    model = small_model(xsa_last_n=2)
    seen = {}
    for i in (1, 3):
        attn = model.blocks[i].attn
        attn.c_v.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("v", i), out))
        attn.proj.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("y", i), a[0]))
    model(torch.randint(0, 64, (2, 12), generator=gen))
    for i, xsa in ((1, False), (3, True)):
        y = seen[("y", i)].view(2, 12, 4, 32)
        v = seen[("v", i)].view(2, 12, 2, 32).repeat_interleave(2, dim=2)
        along_v = (y * v / v.norm(dim=-1, keepdim=True)).sum(-1).abs().max()  # at position 0, y is v itself
        assert (along_v < 1e-5) == xsa, (i, along_v)


def test_skip_gates_at_zero_mix_half_and_half():
    model = small_model(skip_gates=True)
    with torch.no_grad():
        model.skip_gates.zero_()
    gen = torch.Generator().manual_seed(1)
    x, encoder_out = torch.randn(2, 3, 128, generator=gen), torch.randn(2, 3, 128, generator=gen)
    expected = 0.5 * x + 0.5 * model.skip_weights[1] * encoder_out
    torch.testing.assert_close(model._add_skip(x, encoder_out, 1), expected, atol=1e-6, rtol=0)
    ungated = small_model()
    torch.testing.assert_close(ungated._add_skip(x, encoder_out, 1), x + ungated.skip_weights[1] * encoder_out)


def test_orthogonal_init_gives_identity_gram_on_the_smaller_side():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, model_dim=128, num_layers=2, num_heads=2, num_kv_heads=1,
                            ortho_init=True))
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    for w in (attn.c_q.weight, attn.c_k.weight, attn.c_v.weight, mlp.fc.weight):  # 128², 64×128, 64×128, 256×128
        gram = w @ w.T if w.size(0) <= w.size(1) else w.T @ w
        torch.testing.assert_close(gram, torch.eye(gram.size(0)), atol=1e-5, rtol=0)
    assert not attn.proj.weight.any() and not mlp.proj.weight.any()  # zero-init projections stay zero


def test_ln_scale_multiplies_block_inputs_by_inverse_sqrt_layer():
    model = small_model(ln_scale=True)
    inputs = {}
    for i, block in enumerate(model.blocks):
        block.attn.c_q.register_forward_hook(lambda m, a, out, i=i: inputs.__setitem__(i, a[0]))
    model(torch.randint(0, 64, (1, 8)))
    for i, h in inputs.items():  # norm(x) has unit RMS, so the input's RMS is the factor
        rms = h.pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.full_like(rms, 1 / math.sqrt(i + 1)), atol=1e-4, rtol=0)


def test_reverse_rope_rotates_by_minus_theta():
    """The record's apply_rotary_emb: (x1·cos + x2·sin, −x1·sin + x2·cos) on the first rope dims."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 3, 8, generator=gen)
    theta = torch.tensor([[0.0, 0.5], [1.0, 2.0], [3.0, -1.0]])  # (T, 2 pairs): 4 rotated dims, 4 passed
    out = apply_rotary(x, theta.cos(), theta.sin(), reverse=True)
    x1, x2 = x[..., :2], x[..., 2:4]
    torch.testing.assert_close(out[..., :2], x1 * theta.cos() + x2 * theta.sin())
    torch.testing.assert_close(out[..., 2:4], -x1 * theta.sin() + x2 * theta.cos())
    torch.testing.assert_close(out[..., 4:], x[..., 4:])


# The record preset scaled down through overrides: every new piece on, looping from half-way.
SCALED = {"vocab_size": 512, "model_dim": 64, "num_layers": 4, "num_heads": 2, "num_kv_heads": 1, "xsa_last_n": 4,
          "parallel_start": 3, "loop_start": 1, "loop_end": 2, "enable_looping_at": 0.5, "train_seq_len": 32,
          "train_batch_tokens": 1024, "grad_accum": 2, "iterations": 10, "max_wallclock_seconds": 0.0,
          "gptq_reserve_seconds": 0.0, "muon_momentum_warmup_steps": 10, "log_every": 1, "val_every": 0,
          "val_max_tokens": 2048, "compile": False}


def test_scaled_down_record_trains_resumes_across_the_loop_switch_quantizes_and_evaluates(tmp_path, small_dataset):
    cfg = config_from_dict(TrainConfig, {**asdict(RECORD), **SCALED})
    assert cfg.skip_gates and cfg.ln_scale and cfg.ortho_init and cfg.rope_reverse and cfg.muon_row_norm
    run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "straight"))
    first = run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "split", stop_after_steps=3))
    assert first["step"] == 3  # looping switches on at step 5, after the resume
    run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / "split", resume=True))
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.5
    loop = [r for r in records if r["kind"] == "loop"]
    assert [(r["step"], r["encoder"], r["decoder"]) for r in loop] == [(5, [0, 1, 2, 1], [2, 1, 2, 3])]
    a, b = (load_file(tmp_path / run / "ckpt.safetensors") for run in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run_ema_finalize(EmaFinalizeConfig(checkpoint=tmp_path / "split" / "ckpt.safetensors",
                                       out=tmp_path / "final.safetensors"))
    run_quantize(QuantizeConfig(model=tmp_path / "final.safetensors", data=small_dataset,
                                out=tmp_path / "artifact.bin", calib_batches=2))
    report = run_eval(EvalConfig(model=tmp_path / "artifact.bin", data=small_dataset, out=tmp_path / "eval.json",
                                 stride=16, max_val_tokens=1024))
    assert report["settings"]["eval_loops"] == 3 and report["results"]["sliding"]["val_bpb"] > 0

