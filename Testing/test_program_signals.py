"""The ``maskmed`` program and late signals (issue 23): a Ctrl+C or SIGTERM that comes outside a command's own
handling (while it prints its last lines) is a clean cancel, exit 5 and one line, not a traceback; once the exit
code is decided, a signal cannot change it (before: exit 0 with a KeyboardInterrupt traceback, or -2 / -15).

Each case runs ``maskmed_core.cli.program()`` in a child whose command is stood in by a few lines that send the
signal to the child itself at the moment under test, so nothing depends on timing. The child starts with SIGINT at
its default: a test suite started in the background (``&`` in a script) hands its children SIGINT ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maskmed_core.exit_codes import ExitCode

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import os, signal, sys
from maskmed_core import cli
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal's foreground
signum = getattr(signal, sys.argv[1])
when = sys.argv[2]

def command(args):
    print("work done", flush=True)
    if when == "last lines":
        os.kill(os.getpid(), signum)  # while the command prints its summary: outside its own handling
    print("summary", flush=True)
    return 0

real_exit = sys.exit

def exit_late(code):
    if when == "after the exit code":
        os.kill(os.getpid(), signum)
    real_exit(code)

cli._cmd_info = command
sys.exit = exit_late
sys.argv = ["maskmed", "info"]
cli.program()
"""


def _run(signum: signal.Signals, when: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, signum.name, when], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_a_command_prints_its_last_lines_is_a_clean_cancel(signum):
    run = _run(signum, "last lines")
    assert run.returncode == ExitCode.CANCELLED, run.stderr
    assert run.stdout == "work done\n"
    assert run.stderr == f"maskmed: interrupted ({signum.name})\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_exit_code_is_decided_does_not_change_it(signum):
    run = _run(signum, "after the exit code")
    assert run.returncode == ExitCode.OK, run.stderr
    assert (run.stdout, run.stderr) == ("work done\nsummary\n", "")


def test_the_maskmed_program_is_the_entry_with_signal_handling():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"maskmed": "maskmed_core.cli:program"}
    assert (REPO / "maskmed_core" / "cli.py").read_text().rstrip().endswith('if __name__ == "__main__":\n    program()')


class _SignalsWhenFinalized:
    """Sends SIGTERM to this process from its finalizer: the KeyboardInterrupt is raised inside __del__, where
    Python prints it as "Exception ignored" and drops it."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # a few bytecodes: the handler runs here


@pytest.mark.parametrize("report", ["predict", "train"])
def test_a_cancel_that_a_finalizer_dropped_comes_back_at_the_next_progress_report(report, monkeypatch):
    """Seen on a loaded machine: a training SIGTERMed after its first epoch trained on (a second SIGTERM ended it).
    The signal is remembered for the command's block, and each progress report raises it again."""
    from maskmed_core.events import StepEvent
    from maskmed_core.interrupts import sigterm_as_keyboard_interrupt
    from maskmed_core.predict_command import Reporter
    from maskmed_core.train_command import _Progress

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    with sigterm_as_keyboard_interrupt():
        finalized = _SignalsWhenFinalized()
        del finalized  # its KeyboardInterrupt is dropped ("Exception ignored"): the block goes on
        assert dropped == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            if report == "predict":
                Reporter(json_lines=True).progress("ct", "inference", 0.5)
            else:
                _Progress(json_lines=True, is_main=True)(StepEvent(3, 10, 1.0, 2.0, 5.0))
    Reporter(json_lines=True).progress("ct", "inference", 0.5)  # after the block: nothing remembered
