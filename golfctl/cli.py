"""The `golfctl` command line: one thin command per stage that parses options and calls the stage.

Each stage's options come from its config dataclass (golfctl/cli_options.py), imported only when
that command runs or shows its help; only train's --preset/--config/--set, which resolve its
hyper-parameters (and which `golfctl config` takes to list them), are declared here.
"""

from __future__ import annotations

import json
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


def config_source_options(command):
    """--preset, --config and --set: where train's hyper-parameters come from (train, config)."""
    command = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                           help="Override one config key (repeatable).")(command)
    command = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                           help="TOML file of flat keys, applied over the preset.")(command)
    return click.option("--preset", default=None, help="Preset name: tiny, baseline, seed-v2, record.")(command)


@cli.command("train", cls=ConfigCommand, config="stages.train:TrainRun")
@config_source_options
def train_command(preset, config_file, overrides, **options) -> None:
    """Train a model from shards; alone or under torchrun --nproc_per_node=N.

    With --resume the run in --out continues with the config stored in its checkpoint: no
    --preset, --config or --set needed. Given anyway, they may change only the run-control keys
    (log_every, val_every, val_max_tokens, checkpoint_every, compile_warmup_steps)."""
    from golfctl.config import TrainConfig, resolve_config
    from stages.train import CHECKPOINT_NAME, TrainRun, run_train

    if options["resume"]:
        cfg = resumed_config(Path(options["out"]) / CHECKPOINT_NAME, preset, config_file, tuple(overrides))
    elif preset is None and config_file is None:
        raise UserError("pass --preset NAME (tiny, baseline, seed-v2, record) or --config FILE.toml "
                        "(or --resume to continue the run in --out)")
    else:
        cfg = resolve_config(TrainConfig, preset, config_file, tuple(overrides))
    summary = run_train(config_from(TrainRun, options, cfg=cfg))
    if summary["stopped"] == "signal":
        sys.exit(128 + summary["signal"])


def resumed_config(ckpt_path: Path, preset: str | None, config_file: Path | None, overrides: tuple[str, ...]):
    """The config a resumed run continues with: the checkpoint's, with preset < file < --set applied
    over it. They may change only the run-control keys; any other key they change is refused."""
    from golfctl.config import RUN_CONTROL_KEYS, TrainConfig, config_from_dict, resolve_config, resolve_sources

    if not ckpt_path.is_file():
        if preset is None and config_file is None and not overrides:
            raise UserError(f"--resume: {ckpt_path} does not exist; start the run without --resume")
        return resolve_config(TrainConfig, preset, config_file, overrides)  # the stage refuses the missing checkpoint
    stored = _stored_config(ckpt_path)
    try:
        before = config_from_dict(TrainConfig, stored)
    except UserError as exc:
        raise UserError(f"{ckpt_path} stores a config this golfctl refuses ({exc}); start a new --out") from None
    cfg, sources = resolve_sources(TrainConfig, preset, config_file, overrides, base=stored, base_source="checkpoint")
    changed = [k for k in sources if k not in RUN_CONTROL_KEYS and getattr(cfg, k) != getattr(before, k)]
    if changed:
        detail = "; ".join(f"{k} stored {getattr(before, k)!r}, requested {getattr(cfg, k)!r} ({sources[k]})"
                           for k in changed)
        raise UserError(f"{ckpt_path} was trained with another config ({detail}); resume without those values "
                        f"(--resume alone continues with the stored config; only {', '.join(sorted(RUN_CONTROL_KEYS))} "
                        "may change) or start a new --out")
    return cfg


def _stored_config(ckpt_path: Path) -> dict:
    """The config in a checkpoint's header, without reading its tensors."""
    import json

    from golfctl.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, read_metadata
    from golfctl.config import stored_config

    meta = read_metadata(ckpt_path)
    if meta.get("format") == CHECKPOINT_FORMAT and meta.get("version") == str(CHECKPOINT_VERSION):
        try:
            return stored_config(json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError):
            pass
    return load_checkpoint(ckpt_path).config  # raises the checkpoint's own error for a wrong or damaged file


@cli.command("config")
@config_source_options
def config_command(preset, config_file, overrides) -> None:
    """Print every training config key: its resolved value, where it came from and what it does.

    Takes train's --preset, --config and --set (none: the defaults). The output is itself a
    config file: `golfctl config --preset tiny > run.toml` then `golfctl train --config run.toml`."""
    from golfctl.config import TrainConfig, config_table, resolve_sources

    cfg, sources = resolve_sources(TrainConfig, preset, config_file, tuple(overrides))
    for line in config_table(cfg, sources):
        click.echo(line)


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


@cli.command("plot")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the PNGs into.")
def plot_command(folders: tuple[Path, ...], out: Path) -> None:
    """Draw run or output folders (overlaid): train, ttt, quantize, budget and compare PNGs (needs golfctl[plot])."""
    from golfctl.plot import write_plots

    for path in write_plots(list(folders), out, warn=lambda line: click.echo(f"warning: {line}", err=True)):
        click.echo(f"wrote {path}")


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
@click.option("--out", type=click.Path(path_type=Path),
              help="Also write the comparison as JSON (compare.json), for golfctl plot's compare.png.")
def compare_command(results: tuple[Path, ...], references: tuple[Path, ...], reference_bpb: float | None,
                    reference_std: float | None, reference_n: int | None, out: Path | None) -> None:
    """Per-seed scores, means and Welch's one-sided p that RESULTS beat the reference by 0.005 nats."""
    from golfctl.compare import compare, load_results
    from golfctl.fileio import atomic_write_bytes
    from golfctl.outputs import JSON, check_output_file

    numbers = (reference_bpb, reference_std, reference_n)
    if bool(references) == any(v is not None for v in numbers) or (not references and None in numbers):
        raise UserError("give the reference as --reference RESULT… or as all of --reference-bpb, --reference-std "
                        "and --reference-n")
    ours = [r for path in results for r in load_results(path)]
    reference = [r for path in references for r in load_results(path)] if references else None
    if out is not None:
        check_output_file(out, JSON, inputs=(*results, *references))
    comparison = compare(ours, reference, None if references else numbers)
    for line in comparison.lines():
        click.echo(line)
    if out is not None:
        atomic_write_bytes(out, (json.dumps(comparison.as_dict(), indent=1) + "\n").encode())


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
