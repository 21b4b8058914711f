# ruff: noqa: N802, N803
# (Slicer's own style inside the module: camelCase methods and arguments, as in every Slicer scripted module.)
"""3D Slicer module "MaskMed Segmentation": only the Slicer classes (module, widget, self-test).

The widget reads the panel and calls the Logic package next to this file (``MaskMedSegmentationLib/``: named after the
module, as every Slicer module folder shares one sys.path); segmentation and
fine-tuning run in separate processes that the Logic drives, and the widget only polls them with a QTimer.
Nothing is installed or compiled when this file is imported: the Dependencies section does it on request.
"""

import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import time

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
SETTINGS_RECENT_MODELS = "MaskMedSegmentation/RecentModels"
SETTINGS_DEVICE = "MaskMedSegmentation/Device"
SETTINGS_FINE_TUNE_OUTPUT = "MaskMedSegmentation/FineTuneOutputFolder"


def _ensureMaskMedCoreImportable():
    """An installed extension has maskmed_core next to this file; a source checkout has it one folder up."""
    if importlib.util.find_spec("maskmed_core") is not None:
        return
    for folder in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.isfile(os.path.join(folder, "maskmed_core", "__init__.py")):
            if folder not in sys.path:
                sys.path.append(folder)
            importlib.invalidate_caches()
            return


def _maskmedCoreParent():
    """The folder that holds the maskmed_core package (what a child process needs on PYTHONPATH), or None."""
    _ensureMaskMedCoreImportable()
    spec = importlib.util.find_spec("maskmed_core")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def _importLogic():
    """The Logic package (MaskMedSegmentationLib/ next to this file), imported on first use, after maskmed_core is
    findable.
    It imports maskmed_core and torch only lazily, so it imports before the dependencies are installed."""
    _ensureMaskMedCoreImportable()
    import MaskMedSegmentationLib

    return MaskMedSegmentationLib


def _className(segmentClass):
    """Name of a class from Logic.modelInfo: a dict (label, name, color) or an object with .name."""
    return segmentClass["name"] if isinstance(segmentClass, dict) else segmentClass.name


def _stepRequirements(step):
    """The requirement strings of a Logic InstallStep (``requirement``: one string, "" for build-ops)."""
    single = getattr(step, "requirement", None)
    return [single] if single else list(getattr(step, "requirements", None) or [])


def _stepDescription(step):
    return getattr(step, "description", "") or f"{step.kind} {' '.join(_stepRequirements(step))}".strip()


def _requirementName(requirement):
    """'monai[itk]>=1.4' -> 'monai'."""
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]


def _isImported(requirement):
    """Whether the package a requirement names is already imported (then only a restart picks up a new one)."""
    name = _requirementName(requirement).lower().replace("-", "_")
    return any(module.split(".", 1)[0].lower() == name for module in list(sys.modules))


def _torchVersionRequirement(requirement):
    """'torch>=2.1' -> '>=2.1' (the form PyTorchUtils.installTorch takes), 'torch' -> None."""
    match = re.match(r"\s*torch\s*(.*)$", requirement or "", re.IGNORECASE)
    rest = match.group(1).strip() if match else ""
    return rest or None


def _formatDuration(seconds):
    seconds = max(0, int(round(seconds or 0)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def _modelLabel(path):
    """Combo box text for a model file: fine-tuned runs all write best.maskmed, so show the run folder too."""
    name = os.path.basename(path)
    if name in ("best.maskmed", "last.maskmed"):
        return f"{os.path.basename(os.path.dirname(path))}/{name}"
    return name


#
# MaskMedSegmentation
#


class MaskMedSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MaskMed Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MaskMed developers"]
        self.parent.helpText = """
<p>Segments abdominal organs in CT with MaskMed: shared object queries each predict a class-agnostic mask and a
class (decoupled mask and class prediction), on a 3D CNN encoder with a full-scale aware deformable transformer.</p>
<p>Select a CT volume and a model (the bundled default or a <code>.maskmed</code> file), then press
<b>Segment</b>; press it again (<b>Cancel</b>) to stop. The result is one segment per class.</p>
<ul>
<li><b>Query confidence</b>: object queries whose best class probability is below it are dropped.</li>
<li><b>Class confidence</b>: voxels whose winning class probability is below it become background.</li>
</ul>
<p>Both update the segments at once, without running the network again. The query view shows what each object
query predicted. <b>Fine-tune</b> continues training the selected model on an nnU-Net dataset folder or on the
volume + segmentation pairs of the scene. The first time, open <b>Dependencies</b> and press
<b>Install dependencies</b>.</p>
<p>Reference: Xie and Agam (2025), "Decoupled Mask and Class Prediction for Medical Image Segmentation".</p>
"""
        self.parent.acknowledgementText = """
<p>MaskMed follows Xie and Agam (2025), "Decoupled Mask and Class Prediction for Medical Image Segmentation".</p>
<p>The demo CT and its reference labels come from the test data of TotalSegmentator
(<a href="https://github.com/wasserth/TotalSegmentator">github.com/wasserth/TotalSegmentator</a>, Apache License
2.0); the reference labels are TotalSegmentator predictions. TotalSegmentator: Wasserthal J. et al.,
"TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images", Radiology: Artificial
Intelligence, 2023.</p>
<p>PyTorch is installed through the SlicerPyTorch extension. The module layout follows SlicerMONAIAuto3DSeg.</p>
"""


#
# MaskMedSegmentationWidget
#


class MaskMedSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: reads the widgets, calls the Logic, shows progress and results."""

    CLASS_SHOW, CLASS_COLOUR, CLASS_NAME, CLASS_VOLUME, CLASS_CONFIDENCE = range(5)
    QUERY_SHOW, QUERY_INDEX, QUERY_CLASS, QUERY_CONFIDENCE, QUERY_KEPT = range(5)

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.fineTuneSession = None
        # (ok, message) of the last segmentation run, None while one runs; the self-test waits on it.
        self.lastSegmentationResult = None
        self._segmentationNode = None
        self._runThresholds = None
        self._cancelRequested = False
        self._updatingTables = False
        self._shownQueries = set()
        self._missingDependencies = []
        self._fineTuneRunning = False
        self._lossNodes = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MaskMedSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level mrmlSceneChanged(vtkMRMLScene*) to each MRML widget's setMRMLScene.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.onPollTimer)
        # Sliders fire on every pixel of a drag: apply the thresholds once the slider rests for 50 ms.
        self.thresholdTimer = qt.QTimer()
        self.thresholdTimer.setSingleShot(True)
        self.thresholdTimer.setInterval(50)
        self.thresholdTimer.connect("timeout()", self.applyThresholds)
        self.fineTuneTimer = qt.QTimer()
        self.fineTuneTimer.setInterval(200)
        self.fineTuneTimer.connect("timeout()", self.onFineTunePollTimer)

        self.lossPlotView = slicer.qMRMLPlotView()
        self.lossPlotView.setMRMLScene(slicer.mrmlScene)
        self.lossPlotView.setMinimumHeight(180)
        self.ui.lossPlotFrame.layout().addWidget(self.lossPlotView)
        self.ui.lossPlotFrame.hide()
        self.ui.progressBar.hide()
        self.ui.fineTuneProgressBar.hide()
        for table in (self.ui.classTable, self.ui.queryTable):
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
            table.horizontalHeader().setStretchLastSection(True)
        defaultOutput = os.path.join(os.path.expanduser("~"), "MaskMed", "fine-tuning")
        self.ui.fineTuneOutputDirectoryButton.directory = qt.QSettings().value(SETTINGS_FINE_TUNE_OUTPUT, defaultOutput)
        self.ui.fineTuneDatasetDirectoryButton.directory = os.path.expanduser("~")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.outputSegmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.segmentationShow3DButton.setSegmentationNode)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.browseModelButton.connect("clicked()", self.onBrowseModel)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.segmentButton.connect("clicked()", self.onSegmentButton)
        self.ui.queryConfidenceSlider.connect("valueChanged(double)", self.onThresholdSliderChanged)
        self.ui.classConfidenceSlider.connect("valueChanged(double)", self.onThresholdSliderChanged)
        self.ui.classTable.connect("itemChanged(QTableWidgetItem*)", self.onClassTableItemChanged)
        self.ui.queryTable.connect("itemChanged(QTableWidgetItem*)", self.onQueryTableItemChanged)
        self.ui.fineTuneStartButton.connect("clicked()", self.onFineTuneButton)
        self.ui.fineTuneOutputDirectoryButton.connect("directoryChanged(QString)", self.onFineTuneOutputChanged)
        self.ui.checkDependenciesButton.connect("clicked()", self.onCheckDependencies)
        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)

        self.checkDependencies()
        self.populateModels()
        self.populateDevices()
        self.updateButtonStates()

    def cleanup(self):
        self.pollTimer.stop()
        self.thresholdTimer.stop()
        self.fineTuneTimer.stop()
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        if self._fineTuneRunning and self.fineTuneSession is not None:
            self.fineTuneSession.stop()
        self.removeObservers()

    def enter(self):
        self.updateButtonStates()

    def onSceneStartClose(self, caller, event):
        # The run would write into a node that is about to disappear.
        if self.logic is not None and self.logic.isRunning():
            self._cancelRequested = True
            self.logic.cancel()

    def onSceneEndClose(self, caller, event):
        self._segmentationNode = None
        self._shownQueries.clear()
        self._lossNodes = None
        self.ui.lossPlotFrame.hide()
        self.updateResultTables()
        self.updateButtonStates()

    # ------------------------------------------------------------------ logic and state

    def getLogic(self):
        if self.logic is None:
            Logic = _importLogic()
            self.logic = Logic.MaskMedLogic(slicer.mrmlScene)
        return self.logic

    def isSegmenting(self):
        return self.logic is not None and self.logic.isRunning()

    def updateButtonStates(self):
        running = self.isSegmenting()
        self.ui.inputsCollapsibleButton.enabled = not running
        if running:
            self.ui.segmentButton.text = "Cancelling..." if self._cancelRequested else "Cancel"
            self.ui.segmentButton.toolTip = "Stop the segmentation"
            self.ui.segmentButton.enabled = not self._cancelRequested
        else:
            reasons = []
            if self._missingDependencies:
                reasons.append("Install the dependencies first (Dependencies section).")
            if self.ui.inputVolumeSelector.currentNode() is None:
                reasons.append("Select an input CT volume.")
            if not self.currentModelPath():
                reasons.append("Choose a model file (... button next to Model).")
            self.ui.segmentButton.text = "Segment"
            self.ui.segmentButton.toolTip = "\n".join(reasons) if reasons else "Segment the input volume"
            self.ui.segmentButton.enabled = not reasons
        if self._fineTuneRunning:
            self.ui.fineTuneStartButton.text = "Stop fine-tuning"
        else:
            self.ui.fineTuneStartButton.text = "Start fine-tuning"
            self.ui.fineTuneStartButton.enabled = not self._missingDependencies and bool(self.currentModelPath())

    def onInputVolumeChanged(self, node=None):
        self.updateButtonStates()

    # ------------------------------------------------------------------ model and device

    def currentModelPath(self):
        combo = self.ui.modelComboBox
        if combo.currentIndex < 0:
            return None
        return combo.itemData(combo.currentIndex) or None

    def _recentModels(self):
        try:
            paths = json.loads(qt.QSettings().value(SETTINGS_RECENT_MODELS, "[]") or "[]")
        except (TypeError, ValueError):
            paths = []
        return [path for path in paths if isinstance(path, str)]

    def _rememberModel(self, path):
        paths = [path] + [p for p in self._recentModels() if p != path]
        qt.QSettings().setValue(SETTINGS_RECENT_MODELS, json.dumps(paths[:10]))

    def populateModels(self, select=None):
        """Bundled default model first, then the model files chosen or fine-tuned before."""
        combo = self.ui.modelComboBox
        wanted = select or self.currentModelPath()
        defaultPath = None
        try:
            defaultPath = _importLogic().defaultModelPath()
        except Exception as error:
            logging.warning(f"MaskMed: cannot look for the bundled model: {error}")
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        if defaultPath:
            combo.addItem("Default model (bundled)", defaultPath)
            combo.setItemData(combo.count - 1, defaultPath, qt.Qt.ToolTipRole)
        for path in self._recentModels():
            if path != defaultPath and os.path.isfile(path):
                combo.addItem(_modelLabel(path), path)
                combo.setItemData(combo.count - 1, path, qt.Qt.ToolTipRole)
        index = combo.findData(wanted) if wanted else -1
        combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
        combo.blockSignals(wasBlocked)
        self.onModelChanged()

    def onBrowseModel(self):
        current = self.currentModelPath()
        startFolder = os.path.dirname(current) if current else os.path.expanduser("~")
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Choose a MaskMed model", startFolder, "MaskMed model (*.maskmed);;All files (*)")
        if not path:
            return
        self._rememberModel(path)
        self.populateModels(select=path)

    def onModelChanged(self, index=None):
        path = self.currentModelPath()
        if not path:
            self.ui.modelInfoLabel.text = "No model: choose a .maskmed file with the ... button."
        else:
            try:
                info = _importLogic().modelInfo(path)
            except Exception as error:  # also: maskmed_core not installed yet
                logging.warning(f"MaskMed: cannot read model {path}: {error}")
                self.ui.modelInfoLabel.text = f"Cannot read this model: {error}"
            else:
                classes = info["classes"]
                spacing = " x ".join(f"{float(value):g}" for value in info["spacing"])
                patch = " x ".join(str(int(value)) for value in info["patchSize"])
                self.ui.modelInfoLabel.text = (
                    f"{len(classes)} classes: {', '.join(_className(c) for c in classes)}\n"
                    f"Voxel spacing {spacing} mm (z, y, x), patch {patch} voxels")
        self.updateButtonStates()

    def _detectGpu(self):
        """(GPU description or None, tooltip). Imports torch only if it is installed, and only when asked."""
        if importlib.util.find_spec("torch") is None:
            return None, "PyTorch is not installed yet; the GPU is detected once it is (Dependencies section)."
        try:
            import torch
        except Exception as error:
            return None, f"PyTorch could not be imported: {error}"
        if torch.cuda.is_available():
            name = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
            return name, f"PyTorch {torch.__version__} sees {torch.cuda.device_count()} CUDA GPU(s); the first is used."
        build = " (a CPU-only build)" if torch.version.cuda is None else ""
        return None, f"PyTorch {torch.__version__}{build} found no CUDA GPU: MaskMed runs on the CPU."

    def populateDevices(self):
        combo = self.ui.deviceComboBox
        wanted = combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None
        wanted = wanted or qt.QSettings().value(SETTINGS_DEVICE, "auto")
        gpu, note = self._detectGpu()
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(f"Auto (GPU: {gpu})" if gpu else "Auto (CPU: no GPU detected)", "auto")
        combo.addItem("CPU", "cpu")
        if gpu:
            combo.addItem(f"GPU: {gpu}", "cuda")
        index = combo.findData(wanted)
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.toolTip = note
        combo.blockSignals(wasBlocked)

    def currentDevice(self):
        combo = self.ui.deviceComboBox
        return (combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None) or "auto"

    def onDeviceChanged(self, index=None):
        qt.QSettings().setValue(SETTINGS_DEVICE, self.currentDevice())

    # ------------------------------------------------------------------ segmentation

    def thresholds(self):
        return float(self.ui.queryConfidenceSlider.value), float(self.ui.classConfidenceSlider.value)

    def onSegmentButton(self):
        if self.isSegmenting():
            self._cancelRequested = True
            self.ui.statusLabel.text = "Cancelling..."
            self.logic.cancel()
            self.updateButtonStates()
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            self.startSegmentation()

    def startSegmentation(self):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None:
            raise ValueError("Select an input CT volume.")
        logic = self.getLogic()
        # None: the Logic creates "<volume> MaskMed" only once the run has succeeded (a cancel leaves no node).
        segmentationNode = self.ui.outputSegmentationSelector.currentNode()

        self.clearResults()
        self._segmentationNode = None
        self._cancelRequested = False
        self.lastSegmentationResult = None
        self._runThresholds = self.thresholds()
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        self.ui.progressBar.value = 0
        self.ui.progressBar.setFormat("Starting: %p%")
        self.ui.progressBar.show()
        self.ui.statusLabel.text = "Starting..."
        try:
            logic.startSegmentation(
                volumeNode,
                self.currentModelPath(),
                self.currentDevice(),
                segmentationNode=segmentationNode,
                queryThreshold=self._runThresholds[0],
                classThreshold=self._runThresholds[1],
                onProgress=self.onSegmentationProgress,
                onFinished=self.onSegmentationFinished,
            )
        except Exception:
            self.ui.progressBar.hide()
            self.ui.statusLabel.text = ""
            self.updateButtonStates()
            raise
        if logic.isRunning():  # a run that cannot start has already called onSegmentationFinished
            self.pollTimer.start()
        self.updateButtonStates()

    def onPollTimer(self):
        if self.logic is None:
            self.pollTimer.stop()
            return
        try:
            self.logic.poll()
        except Exception as error:
            logging.exception("MaskMed: polling the segmentation failed")
            self.onSegmentationFinished(False, str(error))
            return
        if not self.logic.isRunning() and self.lastSegmentationResult is None:
            # The run ended without calling back: report what the Logic knows.
            self.onSegmentationFinished(False, self.logic.lastError or "the segmentation ended without a result")

    def onSegmentationProgress(self, fraction, stage):
        self.ui.progressBar.value = int(round(100 * min(1.0, max(0.0, float(fraction)))))
        self.ui.progressBar.setFormat(f"{stage}: %p%")
        self.ui.statusLabel.text = f"{stage}..."

    def onSegmentationFinished(self, ok, message):
        self.pollTimer.stop()
        if self.lastSegmentationResult is not None:
            return
        self.lastSegmentationResult = (bool(ok), message)
        elapsed = _formatDuration(self.logic.elapsedSeconds if self.logic is not None else 0)
        if ok:
            self._segmentationNode = self.logic.segmentationNode
            self.ui.outputSegmentationSelector.setCurrentNode(self._segmentationNode)
            self.ui.progressBar.value = 100
            self.ui.progressBar.setFormat("Done")
            # The Logic's message ends with the run time ("Segmented 13 of 15 classes in 42.0 s.").
            self.ui.statusLabel.text = message or f"Done in {elapsed}."
            self.ui.resultsCollapsibleButton.collapsed = False
            if self.thresholds() != self._runThresholds:  # the sliders moved while it ran
                self.applyThresholds()
            else:
                self.updateResultTables()
        else:
            self.ui.progressBar.hide()
            detail = message or (self.logic.lastError if self.logic is not None else None) or "unknown error"
            if self._cancelRequested:
                self.ui.statusLabel.text = f"Cancelled after {elapsed}."
            else:
                self.ui.statusLabel.text = f"Segmentation failed after {elapsed}: {detail}"
                logging.error(f"MaskMed segmentation failed: {detail}")
                if not slicer.app.testingEnabled():
                    slicer.util.errorDisplay(f"MaskMed segmentation failed:\n\n{detail}")
        self._cancelRequested = False
        self.updateButtonStates()

    # ------------------------------------------------------------------ thresholds and result tables

    def onThresholdSliderChanged(self, value=None):
        self.thresholdTimer.start()  # restarts the 50 ms wait

    def applyThresholds(self):
        logic = self.logic
        if logic is None or logic.isRunning() or logic.thresholdSession is None:
            return
        queryThreshold, classThreshold = self.thresholds()
        try:
            updated = logic.setThresholds(queryThreshold, classThreshold)
        except Exception as error:
            logging.exception("MaskMed: applying the thresholds failed")
            self.ui.statusLabel.text = f"Could not apply the thresholds: {error}"
            return
        self.updateResultTables()
        self.ui.statusLabel.text = (
            f"Query confidence {queryThreshold:.2f}, class confidence {classThreshold:.2f}: "
            f"{len(updated or [])} segments updated.")

    def clearResults(self):
        if self.logic is not None and self.logic.thresholdSession is not None:
            for index in list(self._shownQueries):
                self.logic.thresholdSession.hideQuery(index)
        self._shownQueries.clear()
        self.ui.classTable.setRowCount(0)
        self.ui.queryTable.setRowCount(0)

    def _displayNode(self):
        node = self._segmentationNode
        if node is None or node.GetScene() is None:
            return None
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        return node.GetDisplayNode()

    def _segmentId(self, label):
        """The segment of the class with this label value in the result node, or None."""
        node = self._segmentationNode
        if node is None or node.GetScene() is None:
            return None
        segmentId = _importLogic().segmentIdForClass(label)
        return segmentId if node.GetSegmentation().GetSegment(segmentId) is not None else None

    @staticmethod
    def _textItem(text, alignRight=False):
        item = qt.QTableWidgetItem(text)
        if alignRight:
            item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
        return item

    @staticmethod
    def _checkItem(checked, data):
        item = qt.QTableWidgetItem()
        item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
        item.setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
        item.setData(qt.Qt.UserRole, data)
        return item

    def updateResultTables(self):
        session = self.logic.thresholdSession if self.logic is not None else None
        if session is None or self._segmentationNode is None:
            self.ui.classTable.setRowCount(0)
            self.ui.queryTable.setRowCount(0)
            return
        queryThreshold, classThreshold = self.thresholds()
        displayNode = self._displayNode()
        self._updatingTables = True
        try:
            rows = session.classTable(queryThreshold, classThreshold)
            table = self.ui.classTable
            table.setRowCount(len(rows))
            for row, entry in enumerate(rows):
                segmentId = self._segmentId(entry["label"])
                visible = bool(displayNode.GetSegmentVisibility(segmentId)) if displayNode and segmentId else True
                colour = qt.QTableWidgetItem()
                colour.setData(qt.Qt.DecorationRole, qt.QColor(*[int(c) for c in entry["color"]]))
                confidence = entry.get("meanConfidence") if entry["volumeMl"] > 0 else None  # empty class: no mean
                table.setItem(row, self.CLASS_SHOW, self._checkItem(visible, int(entry["label"])))
                table.setItem(row, self.CLASS_COLOUR, colour)
                table.setItem(row, self.CLASS_NAME, self._textItem(entry["name"]))
                table.setItem(row, self.CLASS_VOLUME, self._textItem(f"{entry['volumeMl']:.1f}", alignRight=True))
                table.setItem(row, self.CLASS_CONFIDENCE, self._textItem(
                    "-" if confidence is None or confidence != confidence else f"{confidence:.2f}", alignRight=True))

            queries = session.queryTable(queryThreshold)
            table = self.ui.queryTable
            table.setRowCount(len(queries))
            for row, entry in enumerate(queries):
                index = int(entry["index"])
                table.setItem(row, self.QUERY_SHOW, self._checkItem(index in self._shownQueries, index))
                table.setItem(row, self.QUERY_INDEX, self._textItem(str(index), alignRight=True))
                table.setItem(row, self.QUERY_CLASS, self._textItem(str(entry["className"])))
                table.setItem(row, self.QUERY_CONFIDENCE, self._textItem(f"{entry['confidence']:.2f}", alignRight=True))
                table.setItem(row, self.QUERY_KEPT, self._textItem("yes" if entry["kept"] else "no"))
        finally:
            self._updatingTables = False

    def onClassTableItemChanged(self, item):
        if self._updatingTables or item.column() != self.CLASS_SHOW:
            return
        segmentId = self._segmentId(int(item.data(qt.Qt.UserRole)))
        displayNode = self._displayNode()
        if segmentId and displayNode is not None:
            displayNode.SetSegmentVisibility(segmentId, item.checkState() == qt.Qt.Checked)

    def onQueryTableItemChanged(self, item):
        if self._updatingTables or item.column() != self.QUERY_SHOW:
            return
        session = self.logic.thresholdSession if self.logic is not None else None
        if session is None or self._segmentationNode is None:
            return
        index = int(item.data(qt.Qt.UserRole))
        with slicer.util.tryWithErrorDisplay(f"Could not show query {index}.", waitCursor=True):
            if item.checkState() == qt.Qt.Checked:
                session.showQuery(index, self._segmentationNode)
                self._shownQueries.add(index)
            else:
                session.hideQuery(index)
                self._shownQueries.discard(index)

    # ------------------------------------------------------------------ fine-tuning

    def onFineTuneOutputChanged(self, directory):
        qt.QSettings().setValue(SETTINGS_FINE_TUNE_OUTPUT, directory)

    def onFineTuneButton(self):
        if self._fineTuneRunning:
            self.ui.fineTuneStatusLabel.text = "Stopping..."
            slicer.app.processEvents()
            self.fineTuneSession.stop()  # kills the training process tree; the finished epochs' files stay
            self.finishFineTune()
            return
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            self.startFineTune()

    def scenePairs(self):
        """(volume, segmentation) for every non-empty segmentation whose reference geometry is a scalar volume."""
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        pairs = []
        for segmentationNode in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            volumeNode = segmentationNode.GetNodeReference(role)
            if (volumeNode is not None and volumeNode.IsA("vtkMRMLScalarVolumeNode")
                    and segmentationNode.GetSegmentation().GetNumberOfSegments() > 0):
                pairs.append((volumeNode, segmentationNode))
        return pairs

    def startFineTune(self):
        initModel = self.currentModelPath()
        if not initModel:
            raise ValueError("Choose the model to start from (Model, in the Inputs section).")
        runFolder = os.path.join(self.ui.fineTuneOutputDirectoryButton.directory,
                                 time.strftime("maskmed-finetune-%Y%m%d-%H%M%S"))
        os.makedirs(runFolder, exist_ok=True)
        Logic = _importLogic()
        session = Logic.FineTuneSession()
        if self.ui.fineTuneSceneRadioButton.checked:
            pairs = self.scenePairs()
            if not pairs:
                raise ValueError("No segmentation in the scene has a volume as its reference geometry. Segment a "
                                 "volume (and correct the result in Segment Editor), or choose a dataset folder.")
            classes = {_className(c): int(c["label"] if isinstance(c, dict) else c.label)
                       for c in Logic.modelInfo(initModel)["classes"]}
            self.ui.fineTuneStatusLabel.text = f"Exporting {len(pairs)} volume + segmentation pairs..."
            slicer.app.processEvents()
            datasetPath = session.exportScenePairs(pairs, os.path.join(runFolder, "dataset"), classes)
            for warning in session.warnings:
                logging.warning(f"MaskMed fine-tuning export: {warning}")
        else:
            datasetPath = self.ui.fineTuneDatasetDirectoryButton.directory
            if not os.path.isfile(os.path.join(datasetPath, "dataset.json")):
                raise ValueError(f"{datasetPath} is not an nnU-Net v2 raw dataset folder (it has no dataset.json).")

        self.fineTuneSession = session
        self._fineTuneRunning = True
        self.ui.fineTuneProgressBar.value = 0
        self.ui.fineTuneProgressBar.show()
        self.ui.fineTuneStatusLabel.text = f"Starting; the run is written to {runFolder}"
        try:
            session.start(str(datasetPath), runFolder, initModel,
                          int(self.ui.fineTuneEpochsSpinBox.value), self.currentDevice(),
                          onEvent=self.onFineTuneEvent)
        except Exception:
            self._fineTuneRunning = False
            self.ui.fineTuneProgressBar.hide()
            self.updateButtonStates()
            raise
        self.fineTuneTimer.start()
        self.updateButtonStates()

    def onFineTunePollTimer(self):
        try:
            running = self.fineTuneSession.poll()
        except Exception as error:
            logging.exception("MaskMed: polling fine-tuning failed")
            self.fineTuneSession.stop()
            self.finishFineTune(str(error))
            return
        if not running:
            self.finishFineTune()

    def onFineTuneEvent(self, event):
        """Events of `maskmed train --json` (step, epoch, message, summary) and the child's log lines."""
        kind = event.get("event")
        if kind == "step" and event.get("total"):
            self.ui.fineTuneProgressBar.value = int(100 * event.get("step", 0) / event["total"])
            if "loss" in event:
                step = f"Step {event.get('step')}/{event['total']}"
                self.ui.fineTuneStatusLabel.text = f"{step}: loss {event['loss']:.4f}"
        elif kind == "epoch":
            self.updateLossCurve()
            if "loss" in event:
                dice = f", validation Dice {event['mean_dice']:.3f}" if "mean_dice" in event else ""
                self.ui.fineTuneStatusLabel.text = f"Epoch {event.get('epoch')}: loss {event['loss']:.4f}{dice}"
        elif kind == "message" and event.get("text"):
            self.ui.fineTuneStatusLabel.text = str(event["text"])

    def finishFineTune(self, error=None):
        if not self._fineTuneRunning:
            return
        self.fineTuneTimer.stop()
        self._fineTuneRunning = False
        session = self.fineTuneSession
        self.updateLossCurve()
        modelPath = session.resultModelPath
        if modelPath and os.path.isfile(modelPath):
            self._rememberModel(modelPath)
            self.populateModels(select=modelPath)
            self.ui.fineTuneProgressBar.value = 100
            self.ui.fineTuneStatusLabel.text = f"Fine-tuning finished. The new model is selected: {modelPath}"
        else:
            self.ui.fineTuneProgressBar.hide()
            reason = error or session.lastError or "no model was written"
            self.ui.fineTuneStatusLabel.text = f"Fine-tuning ended without a new model: {reason}"
        self.updateButtonStates()

    def _lossPlotNodes(self):
        """Table, series and chart nodes of the loss curve, created on first use (and again after a scene close)."""
        if self._lossNodes is not None and all(n.GetScene() is not None for n in self._lossNodes.values()):
            return self._lossNodes
        scene = slicer.mrmlScene
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "MaskMed fine-tuning loss")
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "MaskMed training loss")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName("loss")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(0.2, 0.5, 0.9)
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "MaskMed fine-tuning loss")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle("Fine-tuning loss")
        chart.SetXAxisTitle("epoch")
        chart.SetYAxisTitle("training loss")
        chart.SetLegendVisibility(False)
        view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
        view.SetPlotChartNodeID(chart.GetID())
        self.lossPlotView.setMRMLPlotViewNode(view)
        self._lossNodes = {"table": table, "series": series, "chart": chart, "view": view}
        return self._lossNodes

    def updateLossCurve(self):
        losses = list(self.fineTuneSession.lossHistory) if self.fineTuneSession is not None else []
        if not losses:
            return
        table = self._lossPlotNodes()["table"]
        epochs = np.arange(1, len(losses) + 1, dtype=np.float64)
        slicer.util.updateTableFromArray(table, [epochs, np.asarray(losses, dtype=np.float64)], ["epoch", "loss"])
        self.ui.lossPlotFrame.show()

    # ------------------------------------------------------------------ dependencies

    def setDependencyStatus(self, text):
        self.ui.dependencyStatusLabel.text = text
        slicer.app.processEvents()

    def onCheckDependencies(self):
        self.checkDependencies()
        self.populateModels()
        self.populateDevices()

    def checkDependencies(self):
        """Show what is missing; returns the list of missing dependencies (empty when all are there)."""
        try:
            dependencies = _importLogic().dependencies
            missing = list(dependencies.missingDependencies())
        except Exception as error:
            logging.exception("MaskMed: checking the dependencies failed")
            self._missingDependencies = []
            self.ui.installDependenciesButton.enabled = False
            self.setDependencyStatus(f"Could not check the dependencies: {error}")
            self.updateButtonStates()
            return []
        self._missingDependencies = missing
        self.ui.installDependenciesButton.enabled = bool(missing)
        if not missing:
            self.setDependencyStatus("All dependencies are installed.")
        else:
            text = dependencies.describeMissing(missing)
            if any(m.name == "torch" for m in missing) and not hasattr(slicer.modules, "pytorchutils"):
                text += ("\n\nPyTorch is installed through the PyTorch extension, which is not installed: install "
                         "'PyTorch' from View > Extensions Manager and restart Slicer first.")
            self.setDependencyStatus(text)
            self.ui.dependenciesCollapsibleButton.collapsed = False
        self.updateButtonStates()
        return missing

    def onInstallDependencies(self):
        """Run Logic.dependencies.installPlan: torch via the PyTorch extension, pip, then `maskmed build-ops`."""
        dependencies = _importLogic().dependencies
        missing = list(dependencies.missingDependencies())
        plan = list(dependencies.installPlan(missing))
        if not plan:
            self.checkDependencies()
            return
        steps = "\n".join(f"  {number}. {_stepDescription(step)}" for number, step in enumerate(plan, 1))
        if not slicer.app.testingEnabled() and not slicer.util.confirmOkCancelDisplay(
                f"{dependencies.describeMissing(missing)}\n\nThese steps will run:\n{steps}\n\n"
                "Packages are downloaded from the internet; this can take several minutes. Continue?",
                windowTitle="Install MaskMed dependencies"):
            return
        restartNeeded = False
        warnings = []
        self.ui.installDependenciesButton.enabled = False
        try:
            with slicer.util.tryWithErrorDisplay("Installing MaskMed's dependencies failed.", waitCursor=True):
                for number, step in enumerate(plan, 1):
                    self.setDependencyStatus(f"Step {number}/{len(plan)}: {_stepDescription(step)}...")
                    try:
                        restartNeeded = self.runInstallStep(step) or restartNeeded
                    except Exception as error:
                        if not getattr(step, "optional", False):
                            raise
                        logging.warning(f"MaskMed: optional step failed: {_stepDescription(step)}: {error}")
                        warnings.append(f"{_stepDescription(step)} failed (optional): {error}")
        finally:
            importlib.invalidate_caches()
            stillMissing = self.checkDependencies()
        notes = "\n\n".join(warnings)
        if restartNeeded or stillMissing:
            message = "MaskMed's dependencies are installed. Restart Slicer to use them."
            if stillMissing:
                names = ", ".join(m.name for m in stillMissing)
                message += f" ({names} is checked again after the restart; see the Python console if it fails.)"
            self.setDependencyStatus(f"{message}\n\n{notes}".strip())
            if slicer.util.confirmYesNoDisplay(f"{message}\n\nRestart Slicer now?", windowTitle="Restart Slicer"):
                slicer.util.restart()
            return
        self.populateModels()
        self.populateDevices()
        self.setDependencyStatus(f"All dependencies are installed.\n\n{notes}".strip())

    def runInstallStep(self, step):
        """Run one Logic InstallStep; returns True when Slicer must restart to use what it installed."""
        requirements = _stepRequirements(step)
        if step.kind == "torch":
            return self.installTorch(requirements[0] if requirements else "torch")
        if step.kind == "pip":
            wasImported = any(_isImported(requirement) for requirement in requirements)
            slicer.util.pip_install(list(step.arguments or requirements))
            return wasImported
        if step.kind in ("build-ops", "command"):
            self.runCommand(list(step.arguments) or _importLogic().maskmedCommand("build-ops"))
            return False
        raise ValueError(f"Unknown install step {step.kind!r}: {_stepDescription(step)}")

    def installTorch(self, requirement):
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(
                "MaskMed installs PyTorch through the 'PyTorch' extension, which is not installed. Install it from "
                "View > Extensions Manager, restart Slicer, then press Install dependencies again.") from None
        wasImported = "torch" in sys.modules
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=_torchVersionRequirement(requirement))
        if torch is None:
            raise RuntimeError("PyTorch was not installed (the installation was cancelled).")
        return wasImported

    def runCommand(self, command):
        """Run a command (e.g. `maskmed build-ops`) as a child process; the panel stays responsive meanwhile."""
        Logic = _importLogic()
        lastLines = []

        def onEvent(event):
            text = str(event.get("text") or event.get("message") or "")
            if text:
                lastLines.append(text)
                del lastLines[:-15]
                logging.info(f"MaskMed: {text}")
                self.ui.dependencyStatusLabel.text = f"{os.path.basename(str(command[-1]))}: {text}"

        process = Logic.BackgroundProcess(command, env=Logic.childEnvironment(), onEvent=onEvent)
        process.start()
        while process.poll():
            slicer.app.processEvents()
            time.sleep(0.05)
        if process.returncode != 0:
            details = "\n".join(lastLines) or process.stderrText()
            raise RuntimeError(f"{' '.join(command)} failed (exit code {process.returncode}):\n{details}")


#
# MaskMedSegmentationTest
#


class MaskMedSegmentationTest(ScriptedLoadableModuleTest):
    """Segments a real CT through the panel, as a user would. Skips (with a message) when no model is available."""

    SEGMENTATION_TIMEOUT_S = 3600

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentThroughWidget()

    def _processEventsFor(self, seconds, until=None):
        """Process Qt events (the widget's timers) until `until()` is true or `seconds` pass; returns `until()`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until():
                return True
            slicer.app.processEvents()
            time.sleep(0.02)
        return until() if until is not None else True

    def _loadTestVolume(self):
        coreParent = _maskmedCoreParent()
        if coreParent is not None:
            resources = os.path.join(coreParent, "maskmed_core", "resources")
            for path in (os.path.join(resources, "demo_ct.nii.gz"),
                         os.path.join(resources, "demo", "abdomen_ct_3mm.nii.gz")):
                if os.path.isfile(path):
                    self.delayDisplay(f"Loading the bundled demo CT {path}")
                    return slicer.util.loadVolume(path)
        import SampleData

        for sampleName in ("CTACardio", "CTChest"):
            self.delayDisplay(f"Loading the {sampleName} sample volume")
            try:
                return SampleData.SampleDataLogic().downloadSample(sampleName)
            except Exception as error:
                logging.warning(f"Could not load sample data {sampleName}: {error}")
        return None

    def _segmentedVoxels(self, segmentationNode, volumeNode):
        """Number of voxels of the volume's grid that belong to any segment."""
        segmentIds = vtk.vtkStringArray()
        segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MaskMedTestLabelmap__")
        try:
            exported = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelmapNode, volumeNode)
            self.assertTrue(exported, "exporting the segments to a label map failed")
            return int(np.count_nonzero(slicer.util.arrayFromVolume(labelmapNode)))
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)

    def test_SegmentThroughWidget(self):
        self.delayDisplay("MaskMed self-test: segment a CT through the module panel")
        widget = slicer.modules.maskmedsegmentation.widgetRepresentation().self()

        missing = widget.checkDependencies()
        if missing:
            self.delayDisplay("MaskMed self-test skipped: dependencies are missing ("
                              + ", ".join(m.name for m in missing) + "). Install them in the Dependencies section.")
            return
        widget.populateModels()
        modelPath = widget.currentModelPath()
        if not modelPath:
            self.delayDisplay("MaskMed self-test skipped: no model is available (no bundled default model was found "
                              "and no model file was chosen).")
            return
        volumeNode = self._loadTestVolume()
        if volumeNode is None:
            self.delayDisplay("MaskMed self-test skipped: no test CT could be loaded (no demo CT, no SampleData).")
            return

        widget.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        widget.ui.outputSegmentationSelector.setCurrentNode(None)
        widget.ui.queryConfidenceSlider.value = 0.25
        widget.ui.classConfidenceSlider.value = 0.5
        self._processEventsFor(0.2)
        self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)

        self.delayDisplay(f"Segmenting {volumeNode.GetName()} with {modelPath}")
        widget.ui.segmentButton.click()
        self.assertEqual(widget.ui.segmentButton.text, "Cancel", "the run did not start (see the Python console)")
        finished = self._processEventsFor(
            self.SEGMENTATION_TIMEOUT_S, until=lambda: widget.lastSegmentationResult is not None)
        if not finished:
            widget.ui.segmentButton.click()  # cancel
        self.assertTrue(finished, f"segmentation did not finish in {self.SEGMENTATION_TIMEOUT_S} s")
        ok, message = widget.lastSegmentationResult
        self.assertTrue(ok, f"segmentation failed: {message}")
        self.assertEqual(widget.ui.segmentButton.text, "Segment")

        segmentationNode = widget.ui.outputSegmentationSelector.currentNode()
        self.assertIsNotNone(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        classNames = [_className(c) for c in _importLogic().modelInfo(modelPath)["classes"]]
        self.assertEqual(segmentation.GetNumberOfSegments(), len(classNames))
        for name in classNames:
            self.assertTrue(segmentation.GetSegmentIdBySegmentName(name), f"no segment named {name!r}")
        self.assertEqual(widget.ui.classTable.rowCount, len(classNames))

        before = self._segmentedVoxels(segmentationNode, volumeNode)
        self.assertGreater(before, 0, "the segmentation is empty")
        self.delayDisplay("Raising the class confidence threshold to 0.95")
        widget.ui.classConfidenceSlider.value = 0.95
        self._processEventsFor(1.0)  # the 50 ms debounce, then the update
        after = self._segmentedVoxels(segmentationNode, volumeNode)
        self.assertLess(after, before, "raising the class confidence threshold did not shrink the segments")
        self.delayDisplay(f"MaskMed self-test passed ({before} -> {after} segmented voxels)")
