"""The `golfctl` command line: one thin command per stage that parses options and calls the stage.

Each stage's options come from its config dataclass (golfctl/cli_options.py), imported only when
that command runs or shows its help; only train's --preset/--config/--set, which resolve its
hyper-parameters, are declared here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from golfctl import __version__
from golfctl.cli_options import ConfigCommand, config_from
from golfctl.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="golfctl")
def cli() -> None:
    """Train, compress and score Parameter Golf language models, one stage at a time."""


@cli.command("tokenize", cls=ConfigCommand, config="stages.tokenize:TokenizeConfig")
def tokenize_command(**options) -> None:
    """Train a tokenizer and write challenge-format train/val shards with a manifest."""
    from stages.tokenize import TokenizeConfig, run_tokenize

    run_tokenize(config_from(TokenizeConfig, options))


@cli.command("train", cls=ConfigCommand, config="stages.train:TrainRun")
@click.option("--preset", default=None, help="Preset name: tiny, baseline, seed-v2, record.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file of flat keys, applied over the preset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
def train_command(preset, config_file, overrides, **options) -> None:
    """Train a model from shards; alone or under torchrun --nproc_per_node=N."""
    from golfctl.config import TrainConfig, resolve_config
    from stages.train import TrainRun, run_train

    if preset is None and config_file is None:
        raise UserError("pass --preset NAME (tiny, baseline, seed-v2, record) or --config FILE.toml")
    cfg = resolve_config(TrainConfig, preset, config_file, tuple(overrides))
    summary = run_train(config_from(TrainRun, options, cfg=cfg))
    if summary["stopped"] == "signal":
        sys.exit(128 + summary["signal"])


@cli.command("ema-finalize", cls=ConfigCommand, config="stages.ema_finalize:EmaFinalizeConfig")
def ema_finalize_command(**options) -> None:
    """Write a checkpoint's EMA (or raw) weights as a model file."""
    from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize

    run_ema_finalize(config_from(EmaFinalizeConfig, options))


@cli.command("quantize", cls=ConfigCommand, config="stages.quantize:QuantizeConfig")
def quantize_command(**options) -> None:
    """Quantize a model (or a checkpoint's EMA weights) into a budget-checked artifact."""
    from stages.quantize import QuantizeConfig, run_quantize

    run_quantize(config_from(QuantizeConfig, options))


@cli.command("eval", cls=ConfigCommand, config="stages.evaluate:EvalConfig")
def eval_command(**options) -> None:
    """Score a model or artifact on the validation split (plain, sliding, --ttt) into eval.json."""
    from stages.evaluate import EvalConfig, run_eval

    cfg = config_from(EvalConfig, options)
    if cfg.plan:
        from stages.eval_plan import run_plan

        run_plan(cfg)
    else:
        run_eval(cfg)


@cli.command("report")
@click.argument("out", type=click.Path(path_type=Path), default="artifacts")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset folder [default: OUT/data].")
def report_command(out: Path, data: Path | None) -> None:
    """Print the result table of a pipeline output folder (what `make all` ends with)."""
    from golfctl.report import report_lines

    for line in report_lines(out, data):
        click.echo(line)


@cli.command("submit")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The records folder to write, e.g. records/track_10min_16mb/2026-12-03_MyRun.")
@click.option("--name", default="golfctl run", show_default=True, help="The submission's name.")
@click.option("--author", default="", help="Author, for submission.json.")
@click.option("--github-id", default="", help="GitHub id, for submission.json.")
def submit_command(runs: tuple[Path, ...], out: Path, name: str, author: str, github_id: str) -> None:
    """Write a records folder (train_gpt.py, submission.json, README.md, logs) from finished runs, one per seed."""
    from stages.submit import run_submit

    run_submit(list(runs), out, name, author, github_id)


@cli.command("compare")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", "references", multiple=True, type=click.Path(path_type=Path),
              help="A reference result (eval.json, run or submission folder); repeat per seed.")
@click.option("--reference-bpb", type=float, help="Reference mean BPB (with --reference-std and --reference-n).")
@click.option("--reference-std", type=float, help="Reference BPB standard deviation over its seeds.")
@click.option("--reference-n", type=int, help="Reference seed count.")
def compare_command(results: tuple[Path, ...], references: tuple[Path, ...], reference_bpb: float | None,
                    reference_std: float | None, reference_n: int | None) -> None:
    """Per-seed scores, means and Welch's one-sided p that RESULTS beat the reference by 0.005 nats."""
    from golfctl.compare import compare_lines, load_results

    numbers = (reference_bpb, reference_std, reference_n)
    if bool(references) == any(v is not None for v in numbers) or (not references and None in numbers):
        raise UserError("give the reference as --reference RESULT… or as all of --reference-bpb, --reference-std "
                        "and --reference-n")
    ours = [r for path in results for r in load_results(path)]
    reference = [r for path in references for r in load_results(path)] if references else None
    for line in compare_lines(ours, reference, None if references else numbers):
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
