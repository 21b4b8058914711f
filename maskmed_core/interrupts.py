"""SIGTERM handled as Ctrl+C by the commands: a closed Slicer, `kill` or a job scheduler's stop becomes a
KeyboardInterrupt whose text is the signal's name, so each command cancels cleanly (exit code CANCELLED) as it does
for Ctrl+C, instead of dying with -15 and no word. Once a program's work is done, both signals are ignored until it
exits (:func:`hold_signals`), so a late one cannot turn a finished run into a traceback or a -2/-15."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The signals received inside sigterm_as_keyboard_interrupt, by name, until the block ends (raise_if_interrupted).
_received: list[str] = []


def _raise_keyboard_interrupt(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    raise KeyboardInterrupt(name)


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises ``KeyboardInterrupt("SIGTERM")`` and Ctrl+C ``KeyboardInterrupt("SIGINT")``
    (unless SIGINT is ignored, as for a job a script started in the background), and both are remembered until the
    block ends (:func:`raise_if_interrupted`); the previous handlers come back after it. Only in the main thread
    (signal's rule); elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {number: signal.signal(number, _raise_keyboard_interrupt) for number in numbers}
    _received.clear()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Inside :func:`sigterm_as_keyboard_interrupt`: KeyboardInterrupt again when a signal came whose first
    KeyboardInterrupt was lost. Python runs a signal's handler in whatever code the main thread is executing; a
    KeyboardInterrupt raised inside a finalizer (a ``__del__``, a weakref callback) is printed as "Exception
    ignored" and dropped, and the run went on as if never cancelled (seen: a training that trained on after its
    SIGTERM). The commands call this at every progress report."""
    if _received:
        raise KeyboardInterrupt(_received[0])


class StopRequest:
    """The first SIGINT or SIGTERM that came inside :func:`signals_recorded` (its name), or None."""

    def __init__(self) -> None:
        self.signal: str | None = None


@contextmanager
def signals_recorded() -> Iterator[StopRequest]:
    """Inside the block SIGINT and SIGTERM are recorded in the yielded StopRequest, not raised; the previous
    handlers come back after it. For DDP training: a rank that raised at once would leave its partners waiting
    in a collective (and then failing with "Connection closed by peer"), so the ranks agree at each step whether
    one was asked to stop, and stop together. Only in the main thread (signal's rule); elsewhere nothing is
    recorded."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def record(signum: int, frame) -> None:
        if request.signal is None:  # the first one is the one that counts
            request.signal = signal.Signals(signum).name

    previous = {number: signal.signal(number, record) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def sigterm_as_keyboard_interrupt_from_now() -> None:
    """For the whole process (a program's start): SIGTERM raises ``KeyboardInterrupt("SIGTERM")`` wherever it comes."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def hold_signals() -> None:
    """From here on SIGINT and SIGTERM are ignored, for a program whose work is done and whose exit code is decided.
    Ignored, not blocked: a block holds for the calling thread only, and a signal sent to the process then reaches
    another thread (torch's), whose handler makes the main thread raise anyway; and Python's exit puts its own
    handlers back to the default, which ends the process with -15, but leaves an ignored signal ignored."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


def interruption(interrupt: KeyboardInterrupt) -> str:
    """The signal that interrupted: "SIGTERM" from the handler above, else "SIGINT" (Ctrl+C)."""
    return str(interrupt) or "SIGINT"
