"""The `golfctl` command line: one thin command per stage that parses options and calls the stage."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from golfctl import __version__
from golfctl.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="golfctl")
def cli() -> None:
    """Train, compress and score Parameter Golf language models, one stage at a time."""


@cli.command("tokenize")
@click.option("--corpus", default="shakespeare", show_default=True,
              help="`shakespeare` (embedded plays), a .jsonl with a `text` field per line, a .txt file or a folder of .txt files.")
@click.option("--vocab-size", type=int, default=1024, show_default=True, help="Tokenizer vocabulary (at most 65,536).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to create.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Reuse this SentencePiece .model instead of training one.")
@click.option("--val-docs", type=click.IntRange(min=0), default=None,
              help="The first N documents form the validation split [default: 4 plays for shakespeare, 50,000 for .jsonl, 1 for a folder, 0 for a .txt].")
@click.option("--shard-tokens", type=int, default=100_000_000, show_default=True, help="Tokens per shard file.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Encoding threads [default: all cores].")
@click.option("--tokenizer-train-mb", type=click.IntRange(min=1), default=500, show_default=True,
              help="Train the tokenizer on at most this much text (the first training documents).")
@click.option("--force", is_flag=True, help="Replace an existing dataset in --out.")
def tokenize_command(corpus, vocab_size, out, tokenizer, val_docs, shard_tokens, threads, tokenizer_train_mb,
                     force) -> None:
    """Train a tokenizer and write challenge-format train/val shards with a manifest."""
    from stages.tokenize import TokenizeConfig, run_tokenize

    run_tokenize(TokenizeConfig(out=out, corpus=corpus, vocab_size=vocab_size, tokenizer=tokenizer,
                                val_docs=val_docs, shard_tokens=shard_tokens, force=force, threads=threads,
                                tokenizer_train_mb=tokenizer_train_mb))


@cli.command("train")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset folder (golfctl or official).")
@click.option("--preset", default=None, help="Preset name: tiny, baseline, seed-v2, record.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file of flat keys, applied over the preset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (ckpt.safetensors, metrics.jsonl).")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out exactly where it stopped.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer .model for datasets that carry none (official challenge folders).")
@click.option("--stop-after-steps", type=click.IntRange(min=0), default=0,
              help="Checkpoint and stop after N steps of this invocation (pre-emptible jobs).")
def train_command(data, preset, config_file, overrides, out, resume, tokenizer, stop_after_steps) -> None:
    """Train a model from shards; alone or under torchrun --nproc_per_node=N."""
    from golfctl.config import TrainConfig, resolve_config
    from stages.train import TrainRun, run_train

    if preset is None and config_file is None:
        raise UserError("pass --preset NAME (tiny, baseline, seed-v2, record) or --config FILE.toml")
    cfg = resolve_config(TrainConfig, preset, config_file, tuple(overrides))
    summary = run_train(TrainRun(cfg=cfg, data=data, out=out, resume=resume, tokenizer=tokenizer,
                                 stop_after_steps=stop_after_steps))
    if summary["stopped"] == "signal":
        sys.exit(128 + summary["signal"])


@cli.command("ema-finalize")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model file to write (final.safetensors).")
@click.option("--raw", is_flag=True, help="Export the raw weights instead of the EMA.")
@click.option("--compare", is_flag=True, help="Score raw and EMA weights on the validation split (needs --data).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset folder, for --compare.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer .model for datasets that carry none.")
def ema_finalize_command(checkpoint, out, raw, compare, data, tokenizer) -> None:
    """Write a checkpoint's EMA (or raw) weights as a model file."""
    from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize

    run_ema_finalize(EmaFinalizeConfig(checkpoint=checkpoint, out=out, raw=raw, compare=compare, data=data,
                                       tokenizer=tokenizer))


@cli.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset folder: calibration reads its training tokens (and --eval its validation tokens).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Artifact to write (artifact.bin).")
@click.option("--method", type=click.Choice(["gptq", "rtn"]), default="gptq", show_default=True)
@click.option("--bits", type=int, default=6, show_default=True, help="Bits of the block matrices.")
@click.option("--embed-bits", type=int, default=8, show_default=True, help="Bits of the tied embedding.")
@click.option("--clip-sigmas", type=float, default=12.85, show_default=True,
              help="SDClip k of the block matrices: row scale = k·std(row)/qmax.")
@click.option("--embed-clip-sigmas", type=float, default=20.0, show_default=True, help="SDClip k of the embedding.")
@click.option("--budget", type=int, default=16_000_000, show_default=True, help="Bytes for artifact + code.")
@click.option("--fit", is_flag=True, help="Bisect --clip-sigmas for the finest grid that fits the budget.")
@click.option("--codec", type=click.Choice(["ans", "zstd"]), default="ans", show_default=True,
              help="Entropy coder of the quantized integers.")
@click.option("--calib-batches", type=int, default=16, show_default=True, help="Calibration batches of training tokens.")
@click.option("--calib-batch-seqs", type=int, default=8, show_default=True, help="Sequences per calibration batch.")
@click.option("--eval", "evaluate", is_flag=True, help="Also report validation BPB before and after quantization.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer .model for datasets that carry none (with --eval).")
def quantize_command(model, data, out, method, bits, embed_bits, clip_sigmas, embed_clip_sigmas, budget, fit, codec,
                     calib_batches, calib_batch_seqs, evaluate, tokenizer) -> None:
    """Quantize a model (or a checkpoint's EMA weights) into a budget-checked artifact."""
    from stages.quantize import QuantizeConfig, run_quantize

    run_quantize(QuantizeConfig(model=model, data=data, out=out, method=method, bits=bits, embed_bits=embed_bits,
                                clip_sigmas=clip_sigmas, embed_clip_sigmas=embed_clip_sigmas, budget=budget, fit=fit,
                                codec=codec, calib_batches=calib_batches, calib_batch_seqs=calib_batch_seqs,
                                evaluate=evaluate, tokenizer=tokenizer))


@cli.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset folder (its validation split).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Where to write eval.json.")
@click.option("--seq-len", type=click.IntRange(min=0), default=0, help="Window length [default: the model's train_seq_len].")
@click.option("--stride", type=click.IntRange(min=1), default=64, show_default=True, help="Sliding-window step.")
@click.option("--batch-seqs", type=click.IntRange(min=1), default=32, show_default=True, help="Windows per forward.")
@click.option("--no-plain", is_flag=True, help="Skip plain non-overlapping scoring.")
@click.option("--no-sliding", is_flag=True, help="Skip sliding-window scoring.")
@click.option("--ttt", is_flag=True, help="Also score with score-first test-time training.")
@click.option("--ttt-chunk-tokens", type=click.IntRange(min=1), default=32_768, show_default=True)
@click.option("--ttt-lr", type=float, default=0.005, show_default=True)
@click.option("--ttt-momentum", type=float, default=0.9, show_default=True)
@click.option("--ttt-epochs", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--ttt-grad-clip", type=float, default=1.0, show_default=True)
@click.option("--ttt-params", default="all", show_default=True, help="all, or a comma list of mlp, attn, scalar, embed.")
@click.option("--ttt-batch-seqs", type=click.IntRange(min=1), default=32, show_default=True,
              help="Training sequences per TTT step, over all ranks.")
@click.option("--eval-loops", type=click.IntRange(min=0), default=0, help="Loop count [default: the model's eval_loops].")
@click.option("--max-val-tokens", type=click.IntRange(min=0), default=0, help="Score only the first N tokens (quick runs).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer .model for datasets that carry none (official folders).")
def eval_command(model, data, out, seq_len, stride, batch_seqs, no_plain, no_sliding, ttt, ttt_chunk_tokens, ttt_lr,
                 ttt_momentum, ttt_epochs, ttt_grad_clip, ttt_params, ttt_batch_seqs, eval_loops, max_val_tokens,
                 tokenizer) -> None:
    """Score a model or artifact on the validation split (plain, sliding, --ttt) into eval.json."""
    from stages.evaluate import EvalConfig, run_eval

    run_eval(EvalConfig(model=model, data=data, out=out, seq_len=seq_len, stride=stride, batch_seqs=batch_seqs,
                        plain=not no_plain, sliding=not no_sliding, ttt=ttt, ttt_chunk_tokens=ttt_chunk_tokens,
                        ttt_lr=ttt_lr, ttt_momentum=ttt_momentum, ttt_epochs=ttt_epochs, ttt_grad_clip=ttt_grad_clip,
                        ttt_params=ttt_params, ttt_batch_seqs=ttt_batch_seqs, eval_loops=eval_loops,
                        max_val_tokens=max_val_tokens, tokenizer=tokenizer))


@cli.command("report")
@click.argument("out", type=click.Path(path_type=Path), default="artifacts")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset folder [default: OUT/data].")
def report_command(out: Path, data: Path | None) -> None:
    """Print the result table of a pipeline output folder (what `make all` ends with)."""
    from golfctl.report import report_lines

    for line in report_lines(out, data):
        click.echo(line)


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
def inspect_command(path: Path) -> None:
    """Print a file's kind, format version and metadata; check its sizes and checksums."""
    from golfctl.describe import describe

    for line in describe(path):
        click.echo(line)


def main() -> None:
    """Console entry point: user errors become one `Error:` line and a non-zero exit."""
    try:
        code = cli.main(standalone_mode=False)
    except UserError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("Error: interrupted; nothing was left under the output name", err=True)
        sys.exit(130)
    sys.exit(code or 0)
