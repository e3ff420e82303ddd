"""Click parameters generated from a stage's config dataclass, and the dataclass back from their values.

The dataclass is the one source of each option's name, type, default and help. Field metadata:

- `help`: the option's help text (`[default: …]` in it replaces the shown default).
- `argument`: True makes the field a positional argument.
- `choices`: a tuple of the allowed strings.
- `prefix`: the field is a nested config dataclass; each of its fields becomes `--<prefix>-<name>`.
- `option`: the option's name when it differs from the field's (quantize `--eval` sets `evaluate`).
- `cli`: False keeps the field off the command line; the command passes it to `config_from`.

A field `batch_seqs` is the option `--batch-seqs`; one without a default is required. A bool
defaulting to True (or to None: unset unless given) is `--name/--no-name`, one defaulting to
False the flag `--name`. Types: Path,
int, float, str and bool, each optionally `| None`. Ranges are not checked here: each config's
`problems()` lists them, checked by its stage entry so that every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from golfctl.errors import refuse_problems

T = TypeVar("T")

_CLICK_TYPES: dict[type, Any] = {Path: click.Path(path_type=Path), int: int, float: float, str: str, bool: bool}


class ConfigCommand(click.Command):
    """A click command with a parameter per field of a config dataclass, after any declared by hand.

    `config` names the class as "module:Class"; it is imported when the command is parsed or its
    help shown, so `golfctl --help` does not import the stages (and torch). The callback gets
    the values as keyword arguments named like the fields (nested ones `<prefix>_<name>`), for
    `config_from`."""

    def __init__(self, *args: Any, config: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self._generated = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._generated:
            module, _, name = self.config.partition(":")
            self.params += config_params(getattr(importlib.import_module(module), name))
            self._generated = True
        return super().get_params(ctx)


def config_params(cls: type) -> list[click.Parameter]:
    """One click parameter per field of `cls` set on the command line, in field order."""
    specs = list(_fields(cls))
    names = ([spec[3] for spec in specs], [spec[4] for spec in specs])
    duplicated = sorted({n for seen in names for n in seen if seen.count(n) > 1})
    if duplicated:
        raise TypeError(f"{cls.__name__}: two fields share the command-line name(s) {duplicated}")
    return [_parameter(*spec) for spec in specs]


def config_from(cls: type[T], values: Mapping[str, Any], **given: Any) -> T:
    """`cls` built from the parsed command-line `values`, nested configs included; `given` supplies
    the fields kept off the command line. Keys of `values` that are not fields are ignored."""
    return _build(cls, values, "", given)


def _build(cls: type[T], values: Mapping[str, Any], prefix: str, given: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = dict(given)
    for f in dataclasses.fields(cls):
        if "prefix" in f.metadata:
            kwargs[f.name] = _build(hints[f.name], values, f"{prefix}{f.metadata['prefix']}_", {})
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    # click reads "nan" and "inf" as floats; no option of golfctl means either
    refuse_problems([f"--{name.replace('_', '-')} must be a finite number, got {value}"
                     for name, value in ((prefix + k, v) for k, v in kwargs.items() if k not in given)
                     if isinstance(value, float) and not math.isfinite(value)])
    return cls(**kwargs)


def _fields(cls: type, prefix: str = "", defaults: Any = None) -> Iterator[tuple]:
    """(field, type, default or MISSING, parameter name, command-line name) of each field set on
    the command line; a nested config's defaults are those of its parent field's default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if "prefix" in f.metadata:
            yield from _fields(hints[f.name], f"{prefix}{f.metadata['prefix']}_",
                               None if default is dataclasses.MISSING else default)
        else:
            yield f, hints[f.name], default, prefix + f.name, prefix + f.metadata.get("option", f.name)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _parameter(f: dataclasses.Field, hint: Any, default: Any, dest: str, name: str) -> click.Parameter:
    base = _base_type(hint, f.name)
    kind = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else _CLICK_TYPES[base]
    required = default is dataclasses.MISSING
    if f.metadata.get("argument"):
        return click.Argument([dest], type=kind, required=required, default=None if required else default)
    flag = "--" + name.replace("_", "-")
    help_text = f.metadata.get("help")
    common = {"help": help_text, "show_default": not (help_text and "[default:" in help_text)}
    if required:
        return click.Option([flag, dest], type=kind, required=True, **common)
    if base is bool and default is not False:  # True, or None for "decided elsewhere unless given"
        return click.Option([f"{flag}/--no-{flag[2:]}", dest], default=default, **common)
    if base is bool:
        return click.Option([flag, dest], is_flag=True, default=False, **common)
    return click.Option([flag, dest], type=kind, default=default, **common)


def _base_type(hint: Any, name: str) -> type:
    """`hint` without `| None`; TypeError for a type the command line cannot carry."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if hint not in _CLICK_TYPES:
        raise TypeError(f"config field {name!r} has type {hint!r}: the command line carries only "
                        f"{', '.join(t.__name__ for t in _CLICK_TYPES)} (optionally | None)")
    return hint
