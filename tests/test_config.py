"""Config: preset < file < --set, strict keys and types, every problem reported at once."""

from __future__ import annotations

import pytest

from golfctl.config import TrainConfig, config_from_dict, preset_names, resolve_config
from golfctl.errors import UserError


def test_presets_exist_and_resolve():
    assert set(preset_names()) >= {"tiny", "baseline", "seed-v2", "record"}
    record = resolve_config(TrainConfig, "record")
    assert (record.num_layers, record.model_dim, record.mlp_activation, record.rope_dims) == (11, 512, "leaky_relu2", 16)
    assert (record.loop_start, record.loop_end, record.num_loops, record.enable_looping_at) == (3, 5, 3, 0.35)
    assert (record.train_seq_len, record.train_batch_tokens, record.ema_decay, record.warmdown_frac) == \
        (2048, 786432, 0.9965, 0.72)
    seed = resolve_config(TrainConfig, "seed-v2")
    assert (seed.vocab_size, seed.num_loops, seed.resolved_eval_loops, seed.qk_gain_init) == (8192, 8, 16, 5.25)


def test_merge_order(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("model_dim = 256\nnum_heads = 4\nseed = 7\n")
    cfg = resolve_config(TrainConfig, "baseline", file, ("seed=9", "matrix_lr=1e-3", "unet_skips=false"))
    assert (cfg.model_dim, cfg.num_heads, cfg.seed, cfg.matrix_lr, cfg.unet_skips) == (256, 4, 9, 1e-3, False)
    assert cfg.num_layers == 9  # from the preset


def test_all_problems_reported_at_once():
    with pytest.raises(UserError) as err:
        resolve_config(TrainConfig, "tiny", None, ("modl_dim=3", "num_layers=2.5", "compile=1", "oops"))
    message = str(err.value)
    for fragment in ("unknown key 'modl_dim'", "num_layers must be int", "compile must be bool", "'oops'"):
        assert fragment in message


def test_value_checks():
    with pytest.raises(UserError, match="not divisible by num_kv_heads"):
        config_from_dict(TrainConfig, {"num_heads": 8, "num_kv_heads": 3})
    with pytest.raises(UserError, match="train_batch_tokens"):
        config_from_dict(TrainConfig, {"train_batch_tokens": 1000})
    with pytest.raises(UserError, match="unknown preset"):
        resolve_config(TrainConfig, "huge")


def test_int_promotes_to_float_but_not_back():
    assert config_from_dict(TrainConfig, {"mlp_mult": 3}).mlp_mult == 3.0
    with pytest.raises(UserError, match="iterations must be int"):
        config_from_dict(TrainConfig, {"iterations": 10.0})


def test_configs_stored_by_earlier_releases_still_load():
    """Files keep the config of the golfctl that wrote them: a renamed key is mapped, and fields
    added since (the record's XSA, skip gates, …) take defaults that keep the old behaviour."""
    from dataclasses import asdict

    from golfctl.config import stored_config

    old = {k: v for k, v in asdict(TrainConfig()).items()
           if k not in ("embed_weight_decay", "scalar_weight_decay", "xsa_last_n", "skip_gates", "rope_reverse")}
    old["adam_weight_decay"] = 0.01
    cfg = config_from_dict(TrainConfig, stored_config(old))
    assert (cfg.embed_weight_decay, cfg.scalar_weight_decay) == (0.01, 0.01)
    assert (cfg.xsa_last_n, cfg.skip_gates, cfg.rope_reverse) == (0, False, False)


def test_record_fields_are_checked():
    with pytest.raises(UserError) as err:
        resolve_config(TrainConfig, "record", None, ("xsa_last_n=12", "gptq_reserve_seconds=700",
                                                     "embed_weight_decay=-1", "scalar_weight_decay=-0.5"))
    message = str(err.value)
    for fragment in ("xsa_last_n must be in 0..num_layers (11), got 12", "gptq_reserve_seconds 700.0 must be below",
                     "embed_weight_decay must be >= 0", "scalar_weight_decay must be >= 0"):
        assert fragment in message
