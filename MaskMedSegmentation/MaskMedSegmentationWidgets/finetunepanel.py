# ruff: noqa: N802, N803, N815, N999  (Slicer code style: camelCase names)
"""The panel's Fine-tune section: start and stop a run, show its progress and loss curve, select the model it made."""

import logging

import slicer

from .lossplot import LossPlot


class FineTunePanel:
    """Binds the Fine-tune section of the .ui to MaskMedSegmentationLib's FineTuneSession.

    ui: the panel's childWidgetVariables. logic: the MaskMedSegmentationLib package. pollTimer: the panel's QTimer,
    started while a run goes on (the panel's timer slot calls ``poll``). runChoices(): (parameter node, model path,
    device) a run starts from. onModelMade(path): selects the model file a run made. onChanged(): called after a run
    starts or ends, so the panel can update its buttons.
    """

    def __init__(self, ui, logic, pollTimer, runChoices, onModelMade, onChanged):
        self.ui, self.logic, self.pollTimer = ui, logic, pollTimer
        self.runChoices, self.onModelMade, self.onChanged = runChoices, onModelMade, onChanged
        self.session = None  # MaskMedSegmentationLib.FineTuneSession of the current or last run
        self.lossPlot = LossPlot(ui.lossPlotFrame, logic.LossCurve(slicer.mrmlScene))
        ui.fineTuneProgressBar.hide()
        ui.fineTuneStartButton.connect("clicked()", self.onStartButton)

    def isRunning(self):
        return self.session is not None and self.session.isRunning()

    def onStartButton(self):
        if self.isRunning():
            self.stop()
            return
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            self.start()

    def start(self):
        parameters, initModel, device = self.runChoices()
        session = self.logic.FineTuneSession()
        self.ui.fineTuneStatusLabel.text = "Preparing the training data..."
        self.ui.fineTuneStatusLabel.repaint()  # exporting the scene's pairs takes a few seconds
        datasetFolder = None if parameters.fineTuneFromScene else parameters.fineTuneDatasetFolder
        runFolder, dataset = session.prepareDataset(slicer.mrmlScene, parameters.fineTuneOutputFolder, initModel,
                                                    datasetFolder)
        for warning in session.warnings:
            logging.warning(f"MaskMed fine-tuning export: {warning}")
        self.session = session  # before start(): its events go to onEvent, which reads it
        session.start(dataset, runFolder, initModel, parameters.fineTuneMinutes, device, onEvent=self.onEvent)
        self.ui.fineTuneProgressBar.value = 0
        self.ui.fineTuneProgressBar.show()
        added = f"; new classes: {', '.join(session.newClasses)}" if session.newClasses else ""
        self.ui.fineTuneStatusLabel.text = f"Starting{added}; the run is written to {runFolder}"
        self.pollTimer.start()
        self.onChanged()

    def stop(self):
        """Kill the training process tree; the best model so far is kept and selected."""
        self.session.stop()
        self.finish()

    def poll(self):
        """Read the run's output; finishes it when the process has ended. False when none runs."""
        if not self.isRunning():
            return False
        if not self.session.poll():
            self.finish()
        return self.isRunning()

    def onEvent(self, event):
        """Typed events of `maskmed train --json` (maskmed_core.events) and the child's log lines."""
        percent, text = self.logic.describeTrainingEvent(event)
        if percent is not None:
            self.ui.fineTuneProgressBar.value = percent
        if text is not None:
            self.ui.fineTuneStatusLabel.text = text
        self.lossPlot.update(self.session.lossHistory)

    def finish(self):
        session = self.session
        self.lossPlot.update(session.lossHistory)
        if session.resultModelPath:
            self.onModelMade(session.resultModelPath)
            self.ui.fineTuneProgressBar.value = 100
            ended = "stopped; the best model so far" if session.lastError else "finished; the new model"
            self.ui.fineTuneStatusLabel.text = f"Fine-tuning {ended} is selected: {session.resultModelPath}"
        else:
            self.ui.fineTuneProgressBar.hide()
            self.ui.fineTuneStatusLabel.text = f"Fine-tuning ended without a new model: {session.lastError}"
        self.onChanged()
