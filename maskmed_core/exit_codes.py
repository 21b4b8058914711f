"""The exit codes of every ``maskmed`` command, and the one mapping from an error's type to its code.

A known failure (bad input, an unusable model file, a refused option, a full disk, ...) is reported by its message
and exits with its code; the type decides, never the text. Anything else is a bug in MaskMed (a plain ValueError or
TypeError from our own code, say): it is reported as such, with its traceback, and exits with ERROR, never as a
usage error.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``maskmed`` commands (listed in their ``--help``)."""

    OK = 0
    ERROR = 1  # an unexpected failure (a bug: please report it with the message), or the system failed (a full disk)
    USAGE = 2  # bad command-line arguments
    BAD_INPUT = 3  # an input image or dataset cannot be used (missing, unreadable, not 3D, failed checks, ...)
    BAD_MODEL = 4  # the model file is missing, damaged, foreign or too new
    CANCELLED = 5  # interrupted (Ctrl+C or SIGTERM): predict leaves no partial output, train keeps the last epoch
    DIVERGED = 6  # train only: the loss became NaN or infinite; the last good files are kept


# The known failures, by the full name of their type (so that this module imports none of them): an error takes the
# code of the nearest class in its MRO named here. Testing/test_commands.py checks that every name resolves.
KNOWN_FAILURES: dict[str, ExitCode] = {
    "maskmed_core.io.errors.OutputLocationError": ExitCode.USAGE,
    "maskmed_core.atomic.OutputIsAFolderError": ExitCode.USAGE,
    "maskmed_core.training.options.OptionError": ExitCode.USAGE,
    "maskmed_core.plans.fingerprint.PlanOptionError": ExitCode.USAGE,
    "maskmed_core.devices.DeviceError": ExitCode.USAGE,
    "maskmed_core.training.state.TrainingStateError": ExitCode.USAGE,
    "maskmed_core.io.errors.InputError": ExitCode.BAD_INPUT,
    "maskmed_core.training.trainer.TrainingError": ExitCode.BAD_INPUT,
    "maskmed_core.training.trainer.DivergedError": ExitCode.DIVERGED,
    "maskmed_core.checkpoint.ModelFileError": ExitCode.BAD_MODEL,
    "maskmed_core.inference.result.ResultFileError": ExitCode.BAD_MODEL,
    "maskmed_core.inference.sliding_window.InferenceCancelled": ExitCode.CANCELLED,
    "builtins.KeyboardInterrupt": ExitCode.CANCELLED,
    "builtins.OSError": ExitCode.ERROR,  # the system failed (a full disk, a quota, permissions): not our bug
}


def _full_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def known_exit_code(error: BaseException) -> ExitCode | None:
    """The exit code of a known failure (the nearest class in the error's MRO that has one), None for a bug."""
    names = (_full_name(kind) for kind in type(error).__mro__)
    return next((KNOWN_FAILURES[name] for name in names if name in KNOWN_FAILURES), None)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of an error, by its type, never by its text: ERROR for one that is not a known failure."""
    code = known_exit_code(error)
    return ExitCode.ERROR if code is None else code


def report_failure(error: BaseException, report: Callable[[str], None]) -> ExitCode:
    """Tell the user about ``error`` through ``report`` and return its exit code: a known failure by its message,
    anything else as a bug in MaskMed, with its type and traceback (ExitCode.ERROR)."""
    code = known_exit_code(error)
    if code is not None:
        report(str(error))
        return code
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    report(f"internal error, a bug in MaskMed (please report it with this message): {type(error).__name__}: {error}\n"
           f"{trace}")
    return ExitCode.ERROR


def exit_codes_help(*codes: ExitCode) -> str:
    """``"exit codes: 0 ok, 1 error, ..."`` for an argparse epilog (all codes when none are given)."""
    return "exit codes: " + ", ".join(f"{code.value} {code.name.lower()}" for code in (codes or tuple(ExitCode)))


def print_error(text: str) -> None:
    """A command's error line on stderr (the commands without a JSON mode)."""
    print(f"maskmed: error: {text}", file=sys.stderr)


def run_reporting(body: Callable[[], int], report: Callable[[str], None], interrupted: str) -> int:
    """``body()``'s exit code; an error is reported (``report_failure``) and exits with its code, a Ctrl+C with
    CANCELLED after ``interrupted`` is reported."""
    try:
        return body()
    except KeyboardInterrupt:
        report(interrupted)
        return ExitCode.CANCELLED
    except Exception as error:  # its exit code by its type; a bug is reported as one
        return report_failure(error, report)
