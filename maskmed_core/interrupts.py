"""SIGTERM handled as Ctrl+C by the commands: a closed Slicer, `kill` or a job scheduler's stop becomes a
KeyboardInterrupt whose text is the signal's name, so each command cancels cleanly (exit code CANCELLED) as it does
for Ctrl+C, instead of dying with -15 and no word."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _raise_keyboard_interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises ``KeyboardInterrupt("SIGTERM")``; the previous handler comes back after it.
    Only in the main thread (signal's rule); elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(interrupt: KeyboardInterrupt) -> str:
    """The signal that interrupted: "SIGTERM" from the handler above, else "SIGINT" (Ctrl+C)."""
    return str(interrupt) or "SIGINT"
