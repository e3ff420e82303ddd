"""`golfctl eval --plan`: an eval's work and estimated seconds on H100s (golfctl/plan.py), printed;
nothing is scored or written."""

from __future__ import annotations

import os
from dataclasses import asdict

from golfctl.config import TrainConfig, resolve_config
from golfctl.dataset import open_dataset
from golfctl.errors import refuse_problems
from golfctl.plan import (forward_flops_per_token, measured_rates, plan_lines, record_rates, scoring_work, seconds,
                          ttt_work)
from golfctl.weights import load_weights
from stages.evaluate import EvalConfig, eval_geometry


def run_plan(cfg: EvalConfig) -> dict:
    """The eval's work and estimated seconds (golfctl/plan.py), printed; nothing is scored or written."""
    refuse_problems(cfg.problems())
    config = resolve_config(TrainConfig, cfg.preset) if cfg.preset else load_weights(cfg.model).config
    seq_len, loops = eval_geometry(cfg, config)
    n_targets = cfg.max_val_tokens or open_dataset(cfg.data).splits["val"].tokens - 1
    world_size = cfg.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    works = [scoring_work(name, n_targets + 1, seq_len, stride, cfg.batch_seqs, world_size)
             for name, stride, wanted in (("plain", seq_len, cfg.plain), ("sliding", cfg.stride, cfg.sliding)) if wanted]
    if cfg.ttt:
        works.append(ttt_work(n_targets + 1, seq_len, cfg.stride, cfg.batch_seqs, cfg.ttt_config, world_size))
    rates = measured_rates(cfg.rates) if cfg.rates else record_rates()
    flops = forward_flops_per_token(config, seq_len, loops)
    print(f"eval plan: {cfg.preset and f'preset {cfg.preset}' or cfg.model}, {n_targets:,} targets, seq_len {seq_len}, "
          f"stride {cfg.stride}, loops {loops}, {world_size} rank(s), batch_seqs {cfg.batch_seqs}")
    lines = plan_lines(works, seq_len, flops, rates)
    print("\n".join(lines))
    return {"works": [asdict(w) for w in works], "seconds": [seconds(w, seq_len, flops, rates) for w in works]}
