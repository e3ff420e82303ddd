"""The whole chain in one process: train → ema-finalize → quantize → eval, what the exported
`train_gpt.py` runs (golfctl/export.py bundles this module and what it imports).

`golfctl submit` passes the run's settings as literals. The environment supplies what the
challenge's scripts read from it: `DATA_DIR` (default ./data/), in which `VOCAB_SIZE` names
datasets/fineweb10B_sp{V}/ and tokenizers/fineweb_{V}_bpe.model, `SEED` (default 1337: the
settings carry no seed, so one script serves every seed of a submission), `ITERATIONS` and
`MAX_WALLCLOCK_SECONDS` (0 drops the cap and the GPTQ reserve with it). Under torchrun the
ranks join one process group for the whole chain; training and eval share the work, rank 0
writes the model file and the artifact while the others wait. Every file goes to
./golfctl_run/, emptied first. The last lines are the records' (`quantized_ttt val_loss:…
val_bpb:… eval_time:…ms`, `Total submission size …: N bytes`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

from golfctl.budget import EVAL_KEYS, code_bytes
from golfctl.config import TrainConfig, config_from_dict
from golfctl.distributed import DistContext, on_main, run_distributed
from golfctl.errors import UserError
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.evaluate import EvalConfig, run_eval
from stages.quantize import QuantizeConfig, run_quantize
from stages.train import TrainRun, run_train

OUT = Path("golfctl_run")
DEFAULT_SEED = 1337  # without SEED, as the challenge's scripts
# eval.json's method name → the label the records print
RESULT_LABELS = {"plain": "quantized", "sliding": "quantized_sliding_window", "ttt": "quantized_ttt",
                 "phased": "quantized_ttt_phased", "packed": "diagnostic quantized"}


def run_chain(train: dict, quantize: dict, evaluate: dict) -> None:
    """Run the chain with these settings (export.chain_settings); a user error is one `Error:` line."""
    try:
        run_distributed(lambda ctx: _chain(ctx, train, quantize, evaluate))
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


def _chain(ctx: DistContext, train: dict, quantize: dict, evaluate: dict) -> None:
    cfg = config_from_dict(TrainConfig, {**train, "seed": DEFAULT_SEED, **_environment()})
    vocab = os.environ.get("VOCAB_SIZE", str(cfg.vocab_size))
    root = Path(os.environ.get("DATA_DIR", "./data/"))
    data = root / "datasets" / f"fineweb10B_sp{vocab}"
    tokenizer = root / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    on_main(ctx, lambda: (shutil.rmtree(OUT, ignore_errors=True), OUT.mkdir()), f"emptying {OUT}")
    run_train(TrainRun(cfg=cfg, data=data, out=OUT / "run", tokenizer=tokenizer))
    final, artifact = OUT / "final.safetensors", OUT / "artifact.bin"
    on_main(ctx, lambda: run_ema_finalize(EmaFinalizeConfig(checkpoint=OUT / "run" / "ckpt.safetensors", out=final)),
            "finalizing the EMA weights")
    on_main(ctx, lambda: run_quantize(QuantizeConfig(model=final, data=data, out=artifact, **quantize)),
            "quantizing")
    nested = {f.name: _nested(evaluate, f.metadata["prefix"] + "_", f.default_factory)
              for f in dataclasses.fields(EvalConfig) if "prefix" in f.metadata}
    options = {k: v for k, v in evaluate.items() if k in EVAL_KEYS}
    report = run_eval(EvalConfig(model=artifact, data=data, out=OUT / "eval.json", tokenizer=tokenizer, **nested,
                                 **options))
    if ctx.is_main:
        model_bytes, script_bytes = artifact.stat().st_size, code_bytes({})
        codec = quantize.get("codec", QuantizeConfig.codec)
        print(f"Serialized model quantized+{codec}: {model_bytes} bytes")
        print(f"Code size: {script_bytes} bytes")
        print(f"Total submission size quantized+{codec}: {model_bytes + script_bytes} bytes")
        for name, entry in report["results"].items():
            print(f"{RESULT_LABELS[name]} val_loss:{entry['val_loss']:.8f} val_bpb:{entry['val_bpb']:.8f} "
                  f"eval_time:{1000 * entry['seconds']:.0f}ms", flush=True)


def _nested(evaluate: dict, prefix: str, cls: type):
    """One of EvalConfig's nested configs from the settings' `prefix` keys (`ttt_mode` is EvalConfig's own)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k.removeprefix(prefix): v for k, v in evaluate.items()
                  if k.startswith(prefix) and k.removeprefix(prefix) in names})


def _environment() -> dict:
    """The records' environment overrides of the baked config."""
    env = {}
    for key, name, kind in (("seed", "SEED", int), ("iterations", "ITERATIONS", int),
                            ("max_wallclock_seconds", "MAX_WALLCLOCK_SECONDS", float)):
        if name in os.environ:
            env[key] = kind(os.environ[name])
    if env.get("max_wallclock_seconds") == 0:
        env["gptq_reserve_seconds"] = 0.0  # no clock, nothing to reserve from it
    return env
