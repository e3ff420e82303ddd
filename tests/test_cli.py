"""The command line generated from the stage config dataclasses (golfctl/cli_options.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli_helpers import assert_clean_error, golfctl
from golfctl.cli import cli
from golfctl.cli_options import config_from, config_params
from golfctl.errors import UserError
from golfctl.ttt import TTTConfig
from stages.ema_finalize import EmaFinalizeConfig
from stages.evaluate import EvalConfig
from stages.quantize import QuantizeConfig
from stages.tokenize import TokenizeConfig
from stages.train import TrainRun

# command → (config class, the stage module and entry function its command calls)
STAGES = {
    "tokenize": (TokenizeConfig, "stages.tokenize.run_tokenize"),
    "train": (TrainRun, "stages.train.run_train"),
    "ema-finalize": (EmaFinalizeConfig, "stages.ema_finalize.run_ema_finalize"),
    "quantize": (QuantizeConfig, "stages.quantize.run_quantize"),
    "eval": (EvalConfig, "stages.evaluate.run_eval"),
}

# Every option the hand-written CLI had, as it was spelled, with a non-default value and the
# field it must set (a dotted path into the config). None as the value: a flag.
TODAYS_OPTIONS = {
    "tokenize": [
        ("--corpus", "c.jsonl", "corpus", "c.jsonl"), ("--vocab-size", "512", "vocab_size", 512),
        ("--out", "ds", "out", Path("ds")), ("--tokenizer", "t.model", "tokenizer", Path("t.model")),
        ("--val-docs", "3", "val_docs", 3), ("--shard-tokens", "1000", "shard_tokens", 1000),
        ("--threads", "2", "threads", 2), ("--tokenizer-train-mb", "7", "tokenizer_train_mb", 7),
        ("--force", None, "force", True),
    ],
    "train": [
        ("--data", "ds", "data", Path("ds")), ("--preset", "tiny", None, None), ("--config", "run.toml", None, None),
        ("--set", "seed=3", "cfg.seed", 3), ("--out", "run", "out", Path("run")), ("--resume", None, "resume", True),
        ("--tokenizer", "t.model", "tokenizer", Path("t.model")), ("--stop-after-steps", "5", "stop_after_steps", 5),
    ],
    "ema-finalize": [
        ("CHECKPOINT", "ckpt.safetensors", "checkpoint", Path("ckpt.safetensors")),
        ("--out", "final.safetensors", "out", Path("final.safetensors")), ("--raw", None, "raw", True),
        ("--compare", None, "compare", True), ("--data", "ds", "data", Path("ds")),
        ("--tokenizer", "t.model", "tokenizer", Path("t.model")),
    ],
    "quantize": [
        ("MODEL", "m.safetensors", "model", Path("m.safetensors")), ("--data", "ds", "data", Path("ds")),
        ("--out", "a.bin", "out", Path("a.bin")), ("--method", "rtn", "method", "rtn"), ("--bits", "5", "bits", 5),
        ("--embed-bits", "7", "embed_bits", 7), ("--clip-sigmas", "9.5", "clip_sigmas", 9.5),
        ("--embed-clip-sigmas", "15", "embed_clip_sigmas", 15.0), ("--budget", "1000", "budget", 1000),
        ("--fit", None, "fit", True), ("--codec", "zstd", "codec", "zstd"), ("--calib-batches", "2", "calib_batches", 2),
        ("--calib-batch-seqs", "3", "calib_batch_seqs", 3), ("--eval", None, "evaluate", True),
        ("--tokenizer", "t.model", "tokenizer", Path("t.model")),
    ],
    "eval": [
        ("MODEL", "a.bin", "model", Path("a.bin")), ("--data", "ds", "data", Path("ds")),
        ("--out", "e.json", "out", Path("e.json")), ("--seq-len", "128", "seq_len", 128),
        ("--stride", "32", "stride", 32), ("--batch-seqs", "4", "batch_seqs", 4),
        ("--no-plain", None, "plain", False), ("--no-sliding", None, "sliding", False), ("--ttt", None, "ttt", True),
        ("--ttt-chunk-tokens", "1024", "ttt_config.chunk_tokens", 1024), ("--ttt-lr", "0.01", "ttt_config.lr", 0.01),
        ("--ttt-momentum", "0.5", "ttt_config.momentum", 0.5), ("--ttt-epochs", "2", "ttt_config.epochs", 2),
        ("--ttt-grad-clip", "0.25", "ttt_config.grad_clip", 0.25), ("--ttt-params", "mlp", "ttt_config.params", "mlp"),
        ("--ttt-batch-seqs", "8", "ttt_config.batch_seqs", 8), ("--eval-loops", "2", "eval_loops", 2),
        ("--max-val-tokens", "1000", "max_val_tokens", 1000),
        ("--tokenizer", "t.model", "tokenizer", Path("t.model")),
    ],
}
# What each command needs besides its defaults.
REQUIRED = {
    "tokenize": ["--out", "ds"],
    "train": ["--preset", "tiny", "--data", "ds", "--out", "run"],
    "ema-finalize": ["ckpt.safetensors", "--out", "final.safetensors"],
    "quantize": ["m.safetensors", "--data", "ds", "--out", "a.bin"],
    "eval": ["a.bin", "--data", "ds", "--out", "e.json"],
}

# The fields those arguments set (train's cfg comes from --preset).
GIVEN = {"tokenize": {"out"}, "train": {"cfg", "data", "out"}, "ema-finalize": {"checkpoint", "out"},
         "quantize": {"model", "data", "out"}, "eval": {"model", "data", "out"}}


def invoke(*args: str) -> click.testing.Result:
    """The CLI in this process, each option's help on one line."""
    return CliRunner().invoke(cli, list(args), terminal_width=1000, max_content_width=1000)


def parsed(monkeypatch, command: str, *args: str):
    """The config that `golfctl COMMAND ARGS` hands to its stage entry (which does not run)."""
    seen = []
    monkeypatch.setattr(STAGES[command][1], lambda cfg: seen.append(cfg) or {"stopped": "end"})
    result = invoke(command, *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return seen[0]


def expected_options(cls: type, prefix: str = ""):
    """(command-line spelling, help) of each field, by the convention the generator follows."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        if "prefix" in f.metadata:
            yield from expected_options(hints[f.name], f"{prefix}{f.metadata['prefix']}-")
            continue
        if f.metadata.get("argument"):
            yield (f.name.upper() if f.default is dataclasses.MISSING else f"[{f.name.upper()}]"), None
            continue
        name = "--" + prefix + f.metadata.get("option", f.name).replace("_", "-")
        switch = f.default is True or (f.default is None and hints[f.name] == bool | None)  # --x/--no-x
        yield (f"{name} / --no-{name[2:]}" if switch else name), f.metadata.get("help")


@pytest.mark.parametrize("command", STAGES)
def test_help_lists_every_config_field_with_its_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    usage, *lines = result.output.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("  --")}
    for spelling, help_text in expected_options(STAGES[command][0]):
        if help_text is None:
            assert spelling in usage.split()
            continue
        # click puts the help on the next line when the option's column is too wide
        row = next((line + " " + after for line, after in zip(lines, lines[1:] + [""])
                    if line.strip().startswith(spelling + " ")), None)
        assert row is not None, f"{command} --help has no {spelling}: {sorted(rows)}"
        assert help_text and help_text in row, f"{spelling}: field help {help_text!r} not in {row!r}"


@pytest.mark.parametrize("command", TODAYS_OPTIONS)
def test_todays_option_names_still_parse(monkeypatch, tmp_path, command):
    monkeypatch.chdir(tmp_path)
    Path("run.toml").write_text("seed = 1\n")
    args = []
    for option, value, _, _ in TODAYS_OPTIONS[command]:
        args += [value] if option.isupper() else [option] if value is None else [option, value]
    cfg = parsed(monkeypatch, command, *args)
    for option, _, path, want in TODAYS_OPTIONS[command]:
        if path is not None:
            got = cfg
            for part in path.split("."):
                got = getattr(got, part)
            assert got == want, f"{command} {option}: {path} = {got!r}, want {want!r}"


@pytest.mark.parametrize("command", STAGES)
def test_defaults_round_trip(monkeypatch, command):
    cls = STAGES[command][0]
    assert cli.commands[command].config == f"{cls.__module__}:{cls.__name__}"  # options and callback agree
    cfg = parsed(monkeypatch, command, *REQUIRED[command])
    assert type(cfg) is cls
    given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in GIVEN[command]}
    assert cfg == type(cfg)(**given)  # every other field at its default


def test_bad_values_are_one_error_line_naming_each():
    line = assert_clean_error(golfctl("eval", "nope.bin", "--data", "nope", "--out", "e.json", "--stride", 0,
                                      "--batch-seqs", 0), "--stride", "--batch-seqs")
    assert line.count(";") == 1, line


@pytest.mark.parametrize("command, args, named", [
    ("tokenize", ["--vocab-size", "0", "--threads", "-1", "--val-docs", "-2", "--shard-tokens", "0"],
     ["--vocab-size", "--threads", "--val-docs", "--shard-tokens"]),
    ("train", ["--stop-after-steps", "-1"], ["--stop-after-steps"]),
    ("ema-finalize", ["--compare"], ["--compare"]),
    ("quantize", ["--bits", "9", "--budget", "0", "--calib-batches", "0"], ["--bits", "--budget", "--calib-batches"]),
    ("eval", ["--ttt", "--ttt-lr", "-1", "--ttt-batch-seqs", "0", "--max-val-tokens", "-1"],
     ["--ttt-lr", "--ttt-batch-seqs", "--max-val-tokens"]),
])
def test_range_problems_reported_together(command, args, named):
    result = invoke(command, *REQUIRED[command], *args)
    assert isinstance(result.exception, UserError), result.output + repr(result.exception)
    for option in named:
        assert option in str(result.exception), str(result.exception)


def test_top_level_help_does_not_import_the_stages():
    script = ("import sys; from click.testing import CliRunner; from golfctl.cli import cli; "
              "assert CliRunner().invoke(cli, ['--help']).exit_code == 0; print(sorted(m for m in sys.modules "
              "if m.split('.')[0] in ('torch', 'stages')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = dataclasses.field(default=0.5, metadata={"help": "A rate."})
    on: bool = dataclasses.field(default=True, metadata={"help": "Switch."})


@dataclasses.dataclass(frozen=True)
class Toy:
    src: Path = dataclasses.field(metadata={"argument": True})
    dest: Path = dataclasses.field(metadata={"help": "Required path."})
    hidden: int = dataclasses.field(metadata={"cli": False})
    count: int = dataclasses.field(default=3, metadata={"help": "A count."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Maybe a limit."})
    extra: Path | None = dataclasses.field(default=None, metadata={"help": "Maybe a path."})
    name: str = dataclasses.field(default="x", metadata={"help": "A name."})
    mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b"), "help": "A mode."})
    quiet: bool = dataclasses.field(default=False, metadata={"help": "A flag.", "option": "shh"})
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(rate=0.25), metadata={"prefix": "in"})


@click.command()
def toy_command(**values):
    click.echo(repr(config_from(Toy, values, hidden=7)))


toy_command.params = config_params(Toy)


def test_generator_on_every_supported_type():
    runner = CliRunner()
    result = runner.invoke(toy_command, ["s", "--dest", "d"])
    assert result.output.strip() == repr(Toy(src=Path("s"), dest=Path("d"), hidden=7, inner=Inner(rate=0.25)))
    result = runner.invoke(toy_command, ["s", "--dest", "d", "--count", "4", "--limit", "9", "--extra", "e",
                                         "--name", "y", "--mode", "b", "--shh", "--in-rate", "2", "--no-in-on"])
    assert result.output.strip() == repr(Toy(Path("s"), Path("d"), 7, 4, 9, Path("e"), "y", "b", True,
                                             Inner(2.0, False)))
    assert runner.invoke(toy_command, ["s", "--dest", "d", "--mode", "c"]).exit_code == 2
    assert runner.invoke(toy_command, ["s"]).exit_code == 2  # --dest is required


def test_generator_rejects_what_it_cannot_carry():
    @dataclasses.dataclass
    class Listy:
        items: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass
    class Clash:
        in_rate: float = 1.0
        inner: Inner = dataclasses.field(default_factory=Inner, metadata={"prefix": "in"})

    with pytest.raises(TypeError, match="items"):
        config_params(Listy)
    with pytest.raises(TypeError, match="in_rate"):
        config_params(Clash)


def test_ttt_options_come_from_ttt_config():
    names = {p.name for p in config_params(EvalConfig)}
    assert {f"ttt_{f.name}" for f in dataclasses.fields(TTTConfig)} <= names
