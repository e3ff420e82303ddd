"""`golfctl eval --plan`: an eval's work and estimated seconds on H100s (golfctl/plan.py), printed;
nothing is scored or written."""

from __future__ import annotations

import os
from dataclasses import asdict

from golfctl.config import TrainConfig, resolve_config
from golfctl.dataset import open_dataset
from golfctl.errors import refuse_problems
from golfctl.phased_ttt import find_documents
from golfctl.plan import (EVAL_BUDGET_SECONDS, RecordPhasedEval, forward_flops_per_token, lora_factor, measured_rates,
                          phased_rates, phased_work, plan_lines, record_document_lengths, record_rates, scoring_work,
                          seconds, ttt_work)
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
    if cfg.sliding_ttt:
        works.append(ttt_work(n_targets + 1, seq_len, cfg.stride, cfg.batch_seqs, cfg.ttt_config, world_size))
    rates = measured_rates(cfg.rates) if cfg.rates else record_rates()
    flops = forward_flops_per_token(config, seq_len, loops)
    print(f"eval plan: {cfg.preset and f'preset {cfg.preset}' or cfg.model}, {n_targets:,} targets, seq_len {seq_len}, "
          f"stride {cfg.stride}, loops {loops}, {world_size} rank(s), batch_seqs {cfg.batch_seqs}")
    lines = plan_lines(works, seq_len, flops, rates) if works else []
    plan = {"works": [asdict(w) for w in works], "seconds": [seconds(w, seq_len, flops, rates) for w in works]}
    if cfg.phased_ttt:
        phased = _phased_plan(cfg, config, loops, world_size)
        lines += phased.pop("lines")
        plan["phased"] = phased
    print("\n".join(lines))
    return plan


def _phased_plan(cfg: EvalConfig, config, loops: int, world_size: int) -> dict:
    """Phased TTT's work (golfctl.plan.phased_work) on --data's documents, or on the 2026-04-27
    record's (rebuilt from its log) without --data, at rates calibrated from that record's log."""
    phased = cfg.phased_config
    if cfg.data is not None:
        lengths = [n for _, n in find_documents(open_dataset(cfg.data).splits["val"].load_tokens())]
        where = f"the {len(lengths):,} documents of {cfg.data}"
    else:
        lengths = record_document_lengths()
        where = f"the 2026-04-27 record's {len(lengths):,} validation documents (rebuilt from its log)"
    flops = forward_flops_per_token(config, phased.seq_len, loops)
    works = phased_work(lengths, phased, world_size, lora_factor(config, loops, phased), phased.seq_len)
    estimates = [seconds(w, phased.seq_len, flops, r) for w, r in zip(works, phased_rates())]
    record = RecordPhasedEval()
    lines = [f"  phased TTT on {where}, {phased.lanes} lane(s); rates {phased_rates()[0].source}:"]
    lines += [f"  {w.name:<9} {w.train_steps:,} steps, forward {w.forward_rows * phased.seq_len:,} and forward+backward "
              f"{w.train_rows * phased.seq_len:,} token-equivalents/rank: est. {e:,.1f} s" for w, e in zip(works, estimates)]
    total = sum(estimates)
    lines.append(f"  phased   est. {total:,.1f} s; the record logged {record.seconds:.1f} s, plus {record.warmup_seconds:.1f} s "
                 "of compile warm-up on random tokens before its timer (golfctl's phased TTT runs eagerly: no warm-up)")
    if total > EVAL_BUDGET_SECONDS:
        lines.append(f"warning: the estimate {total:,.0f} s passes the {EVAL_BUDGET_SECONDS:.0f} s evaluation budget; "
                     "lower --phased-prefix-docs or --phased-num-phases, or raise --phased-chunk-tokens")
    return {"works": [asdict(w) for w in works], "seconds": estimates, "lines": lines}
