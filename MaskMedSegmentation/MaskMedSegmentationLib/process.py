# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Run ``maskmed`` as a child process: start it, pump its JSON lines into a queue, cancel its whole tree.

Inference and training run in a separate process so that Slicer's GUI stays responsive and so that a
cancel can stop the work at once (a thread running a PyTorch call cannot be interrupted). Two reader
threads turn the child's stdout (JSON lines of ``maskmed_core.events``) and stderr (plain text) into typed
events in a queue; ``BackgroundProcess.poll`` drains that queue on the caller's thread (a QTimer in the widget,
a loop in tests), so ``onEvent`` never runs on a reader thread and may touch the MRML scene.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maskmed_core.events import Event

EventCallback = Callable[["Event"], None]

# How long cancel() lets the child handle SIGTERM (delete its partial outputs, exit with code 5) before the
# whole tree is killed. Short, because the GUI thread waits for it.
CANCEL_GRACE_SECONDS = 0.5
_STDERR_KEEP_LINES = 400


def pythonExecutable() -> str:
    """The Python interpreter that runs ``maskmed_core`` in a child process.

    Outside Slicer this is ``sys.executable``. Inside the Slicer application ``sys.executable`` may be the
    application itself (SlicerApp-real / Slicer.exe), which cannot run ``-m module``; its interpreter is
    ``PythonSlicer`` (``PythonSlicer.exe`` on Windows) in Slicer's ``bin`` folder, which the launcher also puts
    on PATH. It uses the same site-packages as Slicer's embedded Python, so what the extension's installer put
    there (torch, maskmed_core's dependencies) is what the child sees.
    """
    executable = Path(sys.executable)
    if executable.name.lower().startswith("python"):  # python, python3.11, PythonSlicer, python.exe
        return str(executable)
    for candidate in (
        executable.with_name("PythonSlicer"),
        executable.with_name("PythonSlicer.exe"),
        executable.parent.parent / "bin" / "PythonSlicer",  # macOS: Contents/MacOS/Slicer -> Contents/bin
    ):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("PythonSlicer")
    return found or str(executable)


def maskmedCommand(*args: str) -> list[str]:
    """``[python, "-m", "maskmed_core.cli", *args]``: a ``maskmed`` command line for BackgroundProcess.

    The interpreter is :func:`pythonExecutable` (PythonSlicer inside Slicer). Going through ``-m`` rather than
    a ``maskmed`` console script means no PATH lookup and the same interpreter as the caller.
    """
    return [pythonExecutable(), "-m", "maskmed_core.cli", *[str(a) for a in args]]


def childEnvironment(device: str = "auto") -> dict[str, str]:
    """Variables to add to the child's environment (pass as BackgroundProcess ``env``).

    - ``CUDA_VISIBLE_DEVICES=-1`` when device == "cpu": the child then cannot touch a GPU at all (no CUDA
      context, no GPU memory), whatever torch would pick.
    - PYTHONPATH gets the folder that holds the ``maskmed_core`` this process would import (found without
      importing it), so a copy bundled with the module (not pip-installed) is found by the child too.
    - PYTHONUNBUFFERED=1 so that progress lines arrive as they are printed.
    """
    env = {"PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    spec = importlib.util.find_spec("maskmed_core")
    if spec is not None and spec.submodule_search_locations:
        root = str(Path(next(iter(spec.submodule_search_locations))).parent)
        existing = os.environ.get("PYTHONPATH", "")
        parts = [p for p in existing.split(os.pathsep) if p]
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


class BackgroundProcess:
    """One child process: start, JSON-line event pump, cancel of its whole process tree.

    command: the argument list (see :func:`maskmedCommand`). env: variables added to (or overriding) this
    process's environment. onEvent: called from :meth:`poll` / :meth:`wait` (the caller's thread) with each
    event (``maskmed_core.events``): a stdout line of the schema as its event, any other stdout line as
    ``LogEvent(line)``, a stderr line as ``LogEvent(line, "stderr")``. maskmed_core is imported by
    :meth:`start` (not before: the Lib imports before the dependencies are installed).
    """

    def __init__(
        self,
        command: list[str],
        env: dict | None = None,
        onEvent: EventCallback | None = None,
    ):
        self.command = [str(c) for c in command]
        self.env = dict(env or {})
        self.onEvent = onEvent
        self.returncode: int | None = None
        self.cancelled = False
        self.startTime: float | None = None
        self.endTime: float | None = None
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue[Event] = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._stderr: deque[str] = deque(maxlen=_STDERR_KEEP_LINES)
        self._lock = threading.Lock()

    # ----- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child in its own process group (POSIX: a new session) so cancel can kill the group."""
        if self._process is not None:
            raise RuntimeError("this BackgroundProcess was already started")
        from maskmed_core import events

        self._events = events
        environment = os.environ.copy()
        environment.update({str(k): str(v) for k, v in self.env.items()})
        options: dict = {}
        if sys.platform == "win32":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            options["start_new_session"] = True
        self.startTime = time.monotonic()
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **options,
        )
        for stream, parse in ((self._process.stdout, True), (self._process.stderr, False)):
            reader = threading.Thread(target=self._read, args=(stream, parse), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, stream, parseJson: bool) -> None:
        """Reader thread: one event per line until the pipe closes (the child and its heirs exited)."""
        try:
            for raw in stream:
                line = raw.rstrip("\r\n")
                if not line:
                    continue
                event: Event
                if parseJson:
                    event = self._events.from_json(line) or self._events.LogEvent(line)
                else:
                    with self._lock:
                        self._stderr.append(line)
                    event = self._events.LogEvent(line, "stderr")
                self._queue.put(event)
        except (OSError, ValueError):  # the pipe was closed under us (cancel)
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _drain(self) -> None:
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return
            if self.onEvent is not None:
                self.onEvent(event)

    def poll(self) -> bool:
        """Deliver the queued events to onEvent; True while the child runs or events may still arrive.

        False only once the child has exited, both pipes are read to the end and every event was delivered,
        so the caller sees the final "done"/"summary" events before it sees "finished".
        """
        if self._process is None:
            return False
        self._drain()
        if self.returncode is None:
            code = self._process.poll()
            if code is None:
                return True
            self.returncode = code
            self.endTime = time.monotonic()
        if any(reader.is_alive() for reader in self._readers):
            return True
        self._drain()
        return False

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits, delivering events meanwhile; returns its exit code.

        Raises subprocess.TimeoutExpired after ``timeout`` seconds (the child keeps running).
        """
        if self._process is None:
            raise RuntimeError("the process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if timeout is not None and deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.command, timeout)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def isRunning(self) -> bool:
        return self._process is not None and self.returncode is None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stderrText(self) -> str:
        """The child's stderr so far (its last few hundred lines), e.g. a traceback to show on failure."""
        with self._lock:
            return "\n".join(self._stderr)

    # ----- cancel --------------------------------------------------------------------------------------
    def cancel(self, graceSeconds: float = CANCEL_GRACE_SECONDS) -> None:
        """Stop the child and every process it started; returns when none of them is left.

        The tree is listed first (psutil), because once the child dies its children are re-parented and can
        no longer be found from it. Then SIGTERM to the process group (the child's own handler deletes partial
        outputs), ``graceSeconds`` of patience, then SIGKILL to the group and to every listed process that
        is still alive (e.g. one that moved to another group). The child is reaped (no zombie remains).
        """
        process = self._process
        if process is None:
            return
        self.cancelled = True
        if process.poll() is None:
            tree = _descendants(process.pid)
            _signalGroup(process, signal.SIGTERM if os.name != "nt" else None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, graceSeconds))
            _signalGroup(process, getattr(signal, "SIGKILL", None))
            _killAll(tree)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        else:
            # The child ended on its own, but workers it started may outlive it (still in its process group).
            _signalGroup(process, getattr(signal, "SIGKILL", None))
            _killAll(_descendants(process.pid))
        if self.returncode is None:
            self.returncode = process.returncode
            self.endTime = time.monotonic()
        for reader in self._readers:
            reader.join(timeout=2)
        self._drain()


def _descendants(pid: int) -> list:
    """psutil.Process objects of every descendant of ``pid`` (empty without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signalGroup(process: subprocess.Popen, sig) -> None:
    """Send ``sig`` to the child's process group (POSIX); on Windows terminate the child's tree."""
    if os.name == "nt":
        with contextlib.suppress(OSError):
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        return
    if sig is None:
        return
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(OSError):
            process.send_signal(sig)


def _killAll(processes: list) -> None:
    if not processes:
        return
    import psutil

    for child in processes:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(processes, timeout=5)
