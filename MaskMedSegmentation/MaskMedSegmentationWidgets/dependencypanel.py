# ruff: noqa: N802, N803, N815, N999  (Slicer code style: camelCase names)
"""The panel's Dependencies section: what is missing, and the install steps run one by one on the panel's timer."""

import slicer


class DependencyPanel:
    """Binds the Dependencies section of the .ui to MaskMedSegmentationLib's checks and DependencyInstaller.

    ui: the panel's childWidgetVariables. logic: the MaskMedSegmentationLib package. pollTimer: the panel's QTimer,
    started while an install runs (the panel's timer slot calls ``poll``). onChanged(): called after every check, so
    the panel can re-read models and devices and update its buttons.
    """

    def __init__(self, ui, logic, pollTimer, onChanged):
        self.ui, self.logic, self.pollTimer, self.onChanged = ui, logic, pollTimer, onChanged
        self.installer = None
        self.missing = []  # MaskMedSegmentationLib.MissingDependency of the last check
        ui.checkDependenciesButton.connect("clicked()", self.check)
        ui.installDependenciesButton.connect("clicked()", self.onInstall)

    def isInstalling(self):
        return self.installer is not None

    def setStatus(self, text):
        self.ui.dependencyStatusLabel.text = text
        # Painted now, before a blocking step (pip, PyTorch) starts; repaint() runs no event loop, so the poll
        # timer cannot re-enter the installer.
        self.ui.dependencyStatusLabel.repaint()

    def check(self):
        """Show what is missing; returns the list of missing dependencies (empty when all are there)."""
        missing = self.logic.missingDependencies()
        self.missing = missing
        self.ui.installDependenciesButton.enabled = bool(self.logic.installPlan(missing)) and self.installer is None
        self.setStatus(self.logic.dependencyStatus(missing, hasattr(slicer.modules, "pytorchutils")))
        if missing:
            self.ui.dependenciesCollapsibleButton.collapsed = False
        self.onChanged()
        return missing

    def onInstall(self):
        """Run the install plan (PyTorch extension, pip, then `maskmed build-ops`) step by step on the timer.

        This confirmation is the only one: the PyTorch extension is asked to install without asking again.
        """
        missing = self.logic.missingDependencies()
        plan = self.logic.installPlan(missing)
        if not slicer.util.confirmOkCancelDisplay(self.logic.installConfirmation(missing, plan),
                                                  windowTitle="Install MaskMed dependencies"):
            return
        actions = self.logic.InstallActions(installTorch=self.logic.installTorchWithSlicerExtension,
                                            pipInstall=slicer.util.pip_install)
        self.installer = self.logic.DependencyInstaller(plan, actions, self.setStatus)
        self.ui.installDependenciesButton.enabled = False
        self.pollTimer.start()

    def poll(self):
        """Advance a running install by one step; finishes it when the plan is done. False when none runs."""
        if self.installer is None:
            return False
        if not self.installer.poll():
            self._finish()
        return self.installer is not None

    def _finish(self):
        installer, self.installer = self.installer, None
        outcome = installer.outcome(self.check())
        self.setStatus(outcome.message)
        if installer.error is not None:
            slicer.util.errorDisplay(outcome.message, windowTitle="Install MaskMed dependencies")
        elif outcome.offerRestart:
            if slicer.util.confirmYesNoDisplay(f"{outcome.message}\n\nRestart Slicer now?", windowTitle="Restart"):
                slicer.util.restart()
        else:
            self.check()
