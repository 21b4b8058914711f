# ruff: noqa: N802, N803, N815, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Run an install plan (``dependencies.installPlan``) inside Slicer, one step per ``poll()``.

The two Slicer-only actions are passed in by the widget (``InstallActions``): installing torch through the
PyTorch extension and ``slicer.util.pip_install``. They block while they run, as they do in every Slicer
extension. The last step, ``maskmed build-ops``, is a child process that ``poll()`` checks on the panel's
timer, like a segmentation run: no nested event loop. Tests pass in plain callables.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .dependencies import InstallStep, MissingDependency, StepKind, isImported, torchVersionRequirement
from .process import BackgroundProcess, childEnvironment

if TYPE_CHECKING:
    from maskmed_core.events import Event

_BUILD_LOG_LINES = 15


@dataclass
class InstallActions:
    """What only the Slicer application can do. Each raises an exception when it fails or is cancelled.

    installTorch(versionRequirement): install PyTorch (e.g. ">=2.1", or None for any version).
    pipInstall(arguments): ``pip install`` with this argument list.
    """

    installTorch: Callable[[str | None], None]
    pipInstall: Callable[[list[str]], None]


def installTorchWithSlicerExtension(versionRequirement: str | None) -> None:
    """``InstallActions.installTorch`` inside Slicer: the PyTorch extension (``PyTorchUtils``) picks the CUDA or CPU
    build for this computer, without asking again (the panel's one confirmation listed this step). Raises
    RuntimeError, saying what to do, when the extension is not installed or installs nothing."""
    try:
        import PyTorchUtils  # the PyTorch extension's module; only inside Slicer
    except ImportError:
        raise RuntimeError(
            "MaskMed installs PyTorch through the 'PyTorch' extension, which is not installed. Install it from "
            "View > Extensions Manager, restart Slicer, then press Install dependencies again.") from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False, torchVersionRequirement=versionRequirement)  # the panel has asked
    if torch is None:
        raise RuntimeError("The PyTorch extension installed nothing; see the Python console for its messages.")


@dataclass
class InstallOutcome:
    """What the panel says when the plan has run: ``message``, and whether to offer a restart."""

    message: str
    offerRestart: bool


@dataclass
class DependencyInstaller:
    """Run ``plan`` with ``actions``; ``onStatus(text)`` gets one line per step and the build's output lines.

    After poll() returned False: ``error`` is the failure of a required step (None when none failed),
    ``warnings`` the failures of optional steps, ``restartNeeded`` whether an installed package was imported
    already (Slicer must restart to use the new one).
    """

    plan: list[InstallStep]
    actions: InstallActions
    onStatus: Callable[[str], None] | None = None
    restartNeeded: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    _next: int = 0
    _build: BackgroundProcess | None = None
    _buildLog: list[str] = field(default_factory=list)

    def isRunning(self) -> bool:
        return self.error is None and (self._build is not None or self._next < len(self.plan))

    def poll(self) -> bool:
        """Check the build, or run the next step; True while steps remain."""
        if self._build is not None:
            if self._build.poll():
                return True
            build, self._build = self._build, None
            if build.returncode != 0:
                details = "\n".join(self._buildLog) or build.stderrText()
                self._failed(self.plan[self._next], f"exit code {build.returncode}:\n{details}")
            self._next += 1
            return self.isRunning()
        if not self.isRunning():
            return False
        step = self.plan[self._next]
        self._status(f"Step {self._next + 1}/{len(self.plan)}: {step.description}...")
        try:
            if step.kind is StepKind.BUILD_OPS:
                self._startBuild(step)
                return True
            self._runBlocking(step)
        except Exception as error:
            self._failed(step, str(error))
        finally:
            importlib.invalidate_caches()
        self._next += 1
        return self.isRunning()

    def outcome(self, stillMissing: list[MissingDependency]) -> InstallOutcome:
        """The panel's message once the plan has run and the dependencies were checked again."""
        notes = "\n\n".join(self.warnings)
        if self.error is not None:
            return InstallOutcome(f"Installing MaskMed's dependencies failed: {self.error}\n\n{notes}".strip(), False)
        if self.restartNeeded or stillMissing:
            message = "MaskMed's dependencies are installed. Restart Slicer to use them."
            if stillMissing:
                names = ", ".join(m.name for m in stillMissing)
                message += f" ({names} is checked again after the restart; see the Python console if it fails.)"
            return InstallOutcome(f"{message}\n\n{notes}".strip(), True)
        return InstallOutcome(f"All dependencies are installed.\n\n{notes}".strip(), False)

    # ----- internals ---------------------------------------------------------------------------------------
    def _runBlocking(self, step: InstallStep) -> None:
        if step.kind is StepKind.TORCH:
            wasImported = "torch" in sys.modules
            self.actions.installTorch(torchVersionRequirement(step.requirement))
        elif step.kind is StepKind.PIP:
            wasImported = isImported(step.requirement)
            self.actions.pipInstall(list(step.arguments))
        else:
            raise ValueError(f"unknown install step {step.kind!r}")
        self.restartNeeded = self.restartNeeded or wasImported

    def _startBuild(self, step: InstallStep) -> None:
        self._buildLog = []
        build = BackgroundProcess(step.arguments, env=childEnvironment(), onEvent=self._onBuildEvent)
        build.start()
        self._build = build

    def _onBuildEvent(self, event: Event) -> None:
        text = str(getattr(event, "text", ""))
        if text:
            self._buildLog = [*self._buildLog, text][-_BUILD_LOG_LINES:]
            logging.info(f"MaskMed: {text}")
            self._status(f"build-ops: {text}")

    def _failed(self, step: InstallStep, reason: str) -> None:
        if step.optional:
            logging.warning(f"MaskMed: optional step failed: {step.description}: {reason}")
            self.warnings.append(f"{step.description} failed (optional): {reason}")
        else:
            self.error = f"{step.description}: {reason}"

    def _status(self, text: str) -> None:
        if self.onStatus is not None:
            self.onStatus(text)
