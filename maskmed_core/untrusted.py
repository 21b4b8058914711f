"""Checks for values read from files: text, JSON, numbers and the memory budget they are judged against.

Everything inside a model, result or image file may come from a stranger (or a damaged disk), so nothing
read from one is used before it passed these checks: text must be printable and short (a newline in a class
name would otherwise end up in a ``.seg.nrrd`` header as a new field), JSON must be small and shallow (a
200 000-deep nested list makes ``json.loads`` recurse until it fails), numbers must have the right type, be
finite and lie in a stated range. A failed check raises :class:`UntrustedValueError`, which names the field;
the loaders turn it into their own typed error (``ModelFileError``, ``ResultFileError``, ``InputError``).
Standard library only, so the checkpoint code can use it without SimpleITK.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from typing import Any

# Bounds on what a file may ask for. Generous for real models and images, small enough that checking is cheap.
MAX_JSON_BYTES = 1 << 20  # a model file's config, plans and class list are a few kB
MAX_JSON_DEPTH = 16  # the deepest real structure (plans.intensity, a class's terminology) is 4 levels
MAX_NAME_LENGTH = 64  # class names ("right adrenal gland")
MAX_TEXT_LENGTH = 256  # terminology meanings, warnings
DEFAULT_MEMORY_BUDGET = 8 << 30  # without /proc/meminfo (not Linux)
MEMORY_BUDGET_ENV = "MASKMED_MEMORY_BUDGET_MB"

# A JSON string (with escapes) or one bracket: strings are skipped so that "[[[" inside a name does not count.
_JSON_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[\[\]{}]')


class UntrustedValueError(ValueError):
    """A value read from a file failed its check; ``field`` names it (e.g. "classes[3].name")."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UnknownFieldsError(UntrustedValueError):
    """An object read from a file names fields this version does not know: most often a file written by a newer
    maskmed_core (one that added a setting), so the reader can say "update" instead of "damaged"."""

    def __init__(self, field: str, names: Any):
        self.names = sorted(map(str, names))
        super().__init__(field, f"unknown fields: {', '.join(self.names)}")


def load_json(text: str, field: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` after bounding the size and the nesting depth (without recursion), so hostile JSON fails
    with an UntrustedValueError instead of a RecursionError or a huge allocation. NaN and Infinity are refused."""
    if not isinstance(text, str):
        raise UntrustedValueError(field, f"expected JSON text, got {type(text).__name__}")
    if len(text) > max_bytes:
        raise UntrustedValueError(field, f"{len(text):,} characters of JSON, more than the {max_bytes:,} allowed")
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise UntrustedValueError(field, f"JSON nested deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1

    def refuse_constant(name: str) -> None:
        raise UntrustedValueError(field, f"JSON holds {name}, which is not a number")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as error:
        raise UntrustedValueError(field, f"not valid JSON ({error})") from error


def check_text(value: Any, field: str, max_length: int = MAX_TEXT_LENGTH, forbidden: str = "") -> str:
    """``value`` if it is a non-empty printable string of at most ``max_length`` characters without any of
    ``forbidden``. ``str.isprintable`` is False for every control, format, separator-other-than-space,
    surrogate and unassigned code point, so newlines, NULs, tabs and bidi overrides are all refused."""
    if not isinstance(value, str):
        raise UntrustedValueError(field, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise UntrustedValueError(field, "empty text")
    if len(value) > max_length:
        raise UntrustedValueError(field, f"{len(value)} characters, more than the {max_length} allowed")
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise UntrustedValueError(field, f"contains the non-printable character U+{ord(bad):04X}")
    used = sorted({ch for ch in value if ch in forbidden})
    if used:
        raise UntrustedValueError(field, f"contains {' '.join(repr(ch) for ch in used)}, not allowed here")
    return value


def check_int(value: Any, field: str, low: int, high: int) -> int:
    """``int(value)`` if it is an integer (Python or numpy; not a bool, not a float) in [low, high]."""
    if isinstance(value, (bool, np_bool_types())) or not isinstance(value, numbers.Integral):
        raise UntrustedValueError(field, f"expected an integer, got {type(value).__name__} {value!r:.40}")
    number = int(value)
    if not low <= number <= high:
        raise UntrustedValueError(field, f"{number} is outside {low}..{high}")
    return number


def check_number(value: Any, field: str, low: float, high: float, low_open: bool = False) -> float:
    """``float(value)`` if ``value`` is an int or float (not a bool), finite and in [low, high] ((low, high] when
    ``low_open``)."""
    if isinstance(value, (bool, np_bool_types())) or not isinstance(value, numbers.Real):
        raise UntrustedValueError(field, f"expected a number, got {type(value).__name__} {value!r:.40}")
    number = float(value)
    if not math.isfinite(number):
        raise UntrustedValueError(field, f"{number} is not a finite number")
    if number < low or number > high or (low_open and number == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise UntrustedValueError(field, f"{number:g} is outside {interval}")
    return number


def check_sequence(value: Any, field: str, min_length: int, max_length: int) -> list[Any]:
    """``list(value)`` if ``value`` is a list, tuple or 1-D array with a length in [min_length, max_length]."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or getattr(value, "ndim", 1) != 1:
        raise UntrustedValueError(field, f"expected a list, got {type(value).__name__}")
    if not min_length <= len(value) <= max_length:
        raise UntrustedValueError(field, f"{len(value)} entries, expected {min_length}..{max_length}")
    return list(value)


def np_bool_types() -> tuple[type, ...]:
    """numpy's bool type when numpy is imported (it is not an ``int``, but ``numbers`` does not list it either)."""
    import sys

    numpy = sys.modules.get("numpy")
    return (numpy.bool_,) if numpy is not None else ()


def memory_budget_bytes() -> int:
    """The memory a single operation may plan to use: ``MASKMED_MEMORY_BUDGET_MB`` when set, else the
    memory available now (Linux MemAvailable), else 8 GiB. Requests from file headers are judged against it
    before anything is read or allocated."""
    override = os.environ.get(MEMORY_BUDGET_ENV)
    if override:
        return int(float(override) * (1 << 20))
    try:
        with open("/proc/meminfo", encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return DEFAULT_MEMORY_BUDGET
