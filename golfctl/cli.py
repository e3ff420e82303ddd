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
