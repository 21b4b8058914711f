"""A training option declared once: the ``TrainConfig`` field and its metadata, from which the rest is derived.

Each option is a dataclass field made by ``option(...)``: its default, and an ``Option`` with its command-line flag,
help, choices, range, whether ``--resume`` must find it unchanged, and the value runs had before it existed. From
them come the ``maskmed train`` arguments (``add_arguments``), the config from parsed arguments (``from_arguments``),
the validation of a config (``check``) and the settings the resume check compares (``must_match_on_resume``,
``values_before``). Adding an
option is one field.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

_NEVER_MISSING: Any = object()  # ``Option.before``: the option existed from the first training state on


class OptionError(ValueError):
    """A training option has a value it cannot take (``maskmed train`` exits with ExitCode.USAGE)."""


@dataclass(frozen=True)
class Option:
    """What one TrainConfig field is on the command line and to the checks.

    flags: e.g. ("--epochs",), ("-o", "--output"), or ("dataset",) for a positional argument; () for none.
    choices: the values a text option may take (None, where the field's default is None, means "decide later").
    at_least / above / at_most: an inclusive lower, exclusive lower and inclusive upper bound of a number (None,
    where allowed by the default, is not checked).
    must_match: ``--resume`` refuses a state written with another value (the option makes the run what it is).
    before: the value of runs whose saved state predates the option (the resume check compares against it).
    requires: another option without which this one has no effect: giving it alone is refused.
    type, nargs, metavar, action, required: as argparse's; ``type`` defaults to the type of a number default.
    convert: command-line value -> config value (e.g. a file name -> its contents), applied when given.
    """

    flags: tuple[str, ...] = ()
    help: str | None = None
    choices: tuple[str, ...] | None = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    must_match: bool = False
    before: Any = _NEVER_MISSING
    requires: str | None = None
    type: Callable[[str], Any] | None = None
    nargs: int | str | None = None
    metavar: str | tuple[str, ...] | None = None
    action: str | Callable[..., argparse.Action] | None = None
    required: bool = False
    convert: Callable[[Any], Any] | None = None


def option(default: Any = MISSING, *, default_factory: Any = MISSING, flag: str | tuple[str, ...] = (),
           **details: Any) -> Any:
    """A dataclass field carrying its ``Option`` (``flag``: one flag or a tuple of them; ``details``: Option's)."""
    flags = (flag,) if isinstance(flag, str) else tuple(flag)
    metadata = {"option": Option(flags=flags, **details)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def options_of(config_class: type) -> list[tuple[Field, Option]]:
    """Every field of ``config_class`` declared with ``option(...)``, in declaration order."""
    return [(f, f.metadata["option"]) for f in fields(config_class) if "option" in f.metadata]


def default_of(declared: Field) -> Any:
    """A field's default value (a fresh one for a ``default_factory``)."""
    if declared.default_factory is not MISSING:
        return declared.default_factory()
    return None if declared.default is MISSING else declared.default


def check(config: Any) -> None:
    """Raise OptionError naming the first option of ``config`` outside its choices or range, or given without the
    option it requires."""
    for declared, spec in options_of(type(config)):
        name, value = declared.name, getattr(config, declared.name)
        if value is None and declared.default is None:
            continue  # "decide later" (e.g. head, warmup_steps, time_limit_minutes)
        if spec.choices is not None and value not in spec.choices:
            raise OptionError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
        if spec.at_least is not None and spec.at_most is not None and not spec.at_least <= value <= spec.at_most:
            raise OptionError(f"{name} must be between {spec.at_least:g} and {spec.at_most:g}, got {value}")
        if spec.at_least is not None and value < spec.at_least:
            raise OptionError(f"{name} must be at least {spec.at_least:g}, got {value}")
        if spec.above is not None and value <= spec.above:
            raise OptionError(f"{name} must be {'positive' if spec.above == 0 else f'above {spec.above:g}'}, "
                              f"got {value}")
        if spec.requires is not None and value != default_of(declared) and not getattr(config, spec.requires):
            raise OptionError(f"{name} has no effect without {spec.requires}; got {value!r}")


def choices_of(config_class: type) -> dict[str, tuple[str, ...]]:
    """Field name -> the choices of each text option."""
    return {f.name: spec.choices for f, spec in options_of(config_class) if spec.choices is not None}


def must_match_on_resume(config_class: type) -> tuple[str, ...]:
    """The options ``--resume`` must find unchanged (``Option.must_match``)."""
    return tuple(f.name for f, spec in options_of(config_class) if spec.must_match)


def values_before(config_class: type) -> dict[str, Any]:
    """Option -> its value in runs whose saved state predates it (``Option.before``), for the options added later."""
    return {f.name: spec.before for f, spec in options_of(config_class) if spec.before is not _NEVER_MISSING}


def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One argument for each option with flags; its value lands under the field's name.

    An option that ``requires`` another has no default on the command line (None), so that ``from_arguments`` can
    tell it was given."""
    for declared, spec in options_of(config_class):
        if not spec.flags:
            continue
        keywords: dict[str, Any] = {"help": spec.help}
        if spec.flags[0].startswith("-"):
            keywords["dest"] = declared.name
        if spec.action is not None:
            keywords["action"] = spec.action
        else:
            default = default_of(declared)
            keywords["default"] = None if spec.requires else default
            number_type = type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None
            keywords["type"] = spec.type or number_type
            for name in ("choices", "nargs", "metavar"):
                if getattr(spec, name) is not None:
                    keywords[name] = getattr(spec, name)
            if spec.required:
                keywords["required"] = True
        parser.add_argument(*spec.flags, **{k: v for k, v in keywords.items() if v is not None or k == "default"})


def from_arguments(config_class: type, args: argparse.Namespace) -> Any:
    """The config of parsed arguments (``add_arguments``): each given value converted; options not given keep the
    field's default. OptionError for an option given without the one it requires, or a value out of range."""
    values: dict[str, Any] = {}
    for declared, spec in options_of(config_class):
        if not spec.flags:
            continue
        value = getattr(args, declared.name)
        if spec.requires is not None and value is None:
            continue
        if spec.requires is not None and not getattr(args, spec.requires):
            flag = {f.name: s for f, s in options_of(config_class)}[spec.requires].flags[-1]
            raise OptionError(f"{spec.flags[-1]} {value} has no effect without {flag}: add {flag}, or leave "
                              f"{spec.flags[-1]} out")
        values[declared.name] = spec.convert(value) if spec.convert is not None and value is not None else value
    return config_class(**values)
