"""The byte budget: the artifact plus the code that produces the score, counted as the challenge
counts it: the bytes of the `train_gpt.py` that `golfctl submit` would write for those settings
(golfctl/export.py), which is what a reviewer's `wc -c` gives. Inside that exported script, the
script's own size. The budget is decimal bytes (16,000,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import golfctl
from golfctl.errors import EXIT_OVER_BUDGET, UserError

DEFAULT_BUDGET = 16_000_000

# What the chain needs besides the training config: the quantize stage's and the eval stage's
# settings, as the artifact's `meta` (+ codec) and eval.json's `settings` record them.
QUANTIZE_KEYS = ("method", "bits", "embed_bits", "clip_sigmas", "embed_clip_sigmas", "codec", "damp", "calib_batches",
                 "calib_batch_seqs", "mlp_clip_sigmas", "attn_clip_sigmas", "gate_bits", "lqer_top_k", "lqer_rank",
                 "lqer_asym", "lqer_group", "lqer_factor_bits")
EVAL_KEYS = ("seq_len", "stride", "batch_seqs", "plain", "sliding", "ttt", "ttt_mode", "packed", "eval_loops", "compile",
             "compile_backend")
EVAL_PREFIXES = ("ttt_", "phased_", "packed_")  # the nested configs' keys (score-first TTT, phased TTT, --packed)
# The eval settings counted before an eval has run (quantize's budget line): the eval stage's
# defaults with score-first TTT, the challenge's score.
DEFAULT_EVAL = {"seq_len": 0, "stride": 64, "batch_seqs": 32, "plain": True, "sliding": True, "ttt": True,
                "eval_loops": 0, "compile": None, "compile_backend": None}


def chain_settings(config: dict, quantize: dict, evaluate: dict | None = None) -> dict:
    """`run_chain`'s keyword arguments: the training config, the quantize settings (artifact meta
    and codec; an older artifact may lack the calibration keys, which then take the stage's
    defaults) and the eval settings (eval.json's; the nested configs' under their `ttt_`, `phased_`
    and `packed_` names)."""
    evaluate = DEFAULT_EVAL if evaluate is None else evaluate
    # Sorted: the settings are baked in as literals, so the same settings must print the same bytes.
    # Without the seed, which the script reads from SEED as the records' do: one script serves every
    # seed of a submission, and every seed's budget counts that script.
    return {"train": {k: v for k, v in sorted(config.items()) if k != "seed"},
            "quantize": {k: quantize[k] for k in sorted(QUANTIZE_KEYS) if k in quantize},
            "evaluate": {k: v for k, v in sorted(evaluate.items()) if k in EVAL_KEYS or k.startswith(EVAL_PREFIXES)}}


class OverBudget(UserError):
    exit_code = EXIT_OVER_BUDGET


def code_bytes(settings: dict) -> int:
    """Bytes of the train_gpt.py for `settings` (`chain_settings`), or of this exported script."""
    if golfctl.EXPORTED:
        return Path(golfctl.EXPORTED["script"]).stat().st_size
    from golfctl.export import export_script  # not in the exported script, which counts itself
    from golfctl.provenance import git_revision

    return len(export_script(settings, git_revision()))


@dataclass(frozen=True)
class Budget:
    model_bytes: int
    code_bytes: int
    budget: int

    @property
    def total(self) -> int:
        return self.model_bytes + self.code_bytes

    @property
    def headroom(self) -> int:
        return self.budget - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def table(self) -> list[str]:
        rows = [("code", self.code_bytes), ("model", self.model_bytes), ("total", self.total),
                ("budget", self.budget), ("headroom", self.headroom)]
        return [f"  {label:<9}{value:>14,} bytes" for label, value in rows]


def budget_for(model_bytes: int, settings: dict, budget: int = DEFAULT_BUDGET) -> Budget:
    """The budget of an artifact of `model_bytes` produced by the chain with `settings`."""
    return Budget(model_bytes, code_bytes(settings), budget)
