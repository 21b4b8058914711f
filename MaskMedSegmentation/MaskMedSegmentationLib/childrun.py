# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""ChildRun: one ``maskmed`` command in a child process, as the panel drives it.

Segmentation (``MaskMedLogic``) and fine-tuning (``FineTuneSession``) share this life cycle: ``startChild``
starts ``maskmed <arguments> --json`` (BackgroundProcess), ``poll`` (a QTimer in the widget, a loop in tests)
delivers its typed events to ``onChildEvent`` and, once the child has exited and every event is delivered,
calls ``onChildExit(code, details)`` exactly once; ``cancel`` kills the child's whole tree, delivers nothing more
and calls ``onChildCancelled``. Error messages of the child (``MessageEvent`` level "error") are collected for
``details``; without any, the last lines of its stderr are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .process import BackgroundProcess, childEnvironment, maskmedCommand

if TYPE_CHECKING:
    from maskmed_core.events import Event

_STDERR_TAIL_LINES = 5


class ChildRun:
    """Base class: start, poll, cancel one child; subclasses implement the three ``onChild...`` hooks."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.childErrors: list[str] = []
        self._process: BackgroundProcess | None = None

    def startChild(self, arguments: list[str], device: str) -> None:
        """Start ``maskmed <arguments>`` for ``device`` ("cpu" hides every GPU from the child).

        Raises RuntimeError while another child of this run goes, OSError when the interpreter cannot start.
        """
        if self._process is not None:
            raise RuntimeError("a MaskMed process is already running; cancel it first")
        self.returncode = None
        self.childErrors = []
        process = BackgroundProcess(maskmedCommand(*arguments), env=childEnvironment(device), onEvent=self._deliver)
        process.start()
        self._process = process

    def isRunning(self) -> bool:
        return self._process is not None

    def poll(self) -> bool:
        """Deliver the child's events; True while it runs. When it has ended, calls onChildExit once."""
        if self._process is None:
            return False
        if self._process.poll():
            return True
        process, self._process = self._process, None
        self.returncode = process.returncode
        self.onChildExit(process.returncode, self._details(process))
        return False

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the child ends (tests, scripts); returns its exit code."""
        if self._process is not None:
            self._process.wait(timeout)
        self.poll()
        return self.returncode

    def cancel(self) -> None:
        """Kill the child's whole process tree; nothing more is delivered; calls onChildCancelled."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.onEvent = None
        process.cancel()
        self.returncode = process.returncode
        self.onChildCancelled()

    # ----- hooks -------------------------------------------------------------------------------------------
    def onChildEvent(self, event: Event) -> None:
        """One event of the child, on the caller's thread (may touch the scene)."""

    def onChildExit(self, code: int | None, details: str) -> None:
        """The child exited with ``code``; ``details``: its error messages, or the tail of its stderr."""

    def onChildCancelled(self) -> None:
        """cancel() stopped the child."""

    # ----- internals ---------------------------------------------------------------------------------------
    def _deliver(self, event: Event) -> None:
        from maskmed_core.events import MessageEvent

        if isinstance(event, MessageEvent) and event.level == "error":
            self.childErrors.append(event.text)
        self.onChildEvent(event)

    def _details(self, process: BackgroundProcess) -> str:
        if self.childErrors:
            return "; ".join(self.childErrors)
        return " | ".join(process.stderrText().strip().splitlines()[-_STDERR_TAIL_LINES:])
