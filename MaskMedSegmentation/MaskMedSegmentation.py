# ruff: noqa: N802, N803, N815  (Slicer's style, as in every Slicer module: camelCase methods, arguments, parameters)
"""3D Slicer module "MaskMed Segmentation": only the Slicer classes (module, parameter node, widget, self-test).

The panel's state is a parameter node (``MaskMedSegmentationParameterNode``), saved and restored with the scene and
bound to the .ui widgets through their SlicerParameterName property. The widget reads it and calls the Logic package
next to this file (``MaskMedSegmentationLib/``: named after the module, as every Slicer module folder shares one
sys.path), which takes plain arguments; segmentation, fine-tuning and the op build run in child processes that one
QTimer polls. Nothing is installed or compiled when this file is imported: the Dependencies section does it on request.
"""

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
# The oldest Slicer the module runs on, and the Python it bundles (5.10: 3.12). Slicer 5.6-5.8 bundle Python 3.9, which
# maskmed_core does not support (Python 3.10 constructs at run time): there the panel says so instead of failing.
# CMakeLists.txt and README.md state the same version (Testing/test_slicer_module_static.py checks); this file itself
# stays importable on Python 3.9 (Testing/slicer_module_py39.py, run by Testing/test_slicer_module_import.py).
MINIMUM_SLICER_VERSION = "5.10"
MINIMUM_PYTHON = (3, 10)
SETTINGS_RECENT_MODELS = "MaskMedSegmentation/RecentModels"
DEVICES = ["auto", "cpu", "cuda"]


def unsupportedSlicerMessage():
    """None where the module runs, else what the panel shows instead of itself."""
    if sys.version_info >= MINIMUM_PYTHON:
        return None
    running = ".".join(str(part) for part in sys.version_info[:3])
    needed = ".".join(str(part) for part in MINIMUM_PYTHON)
    return (f"MaskMed Segmentation needs 3D Slicer {MINIMUM_SLICER_VERSION} or later (Python {needed} or later); this "
            f"Slicer ({slicer.app.applicationVersion}) runs Python {running}. Install the current Slicer release "
            "from download.slicer.org and the extension in it.")


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


def _importWidgets():
    """The panel's Qt pieces (MaskMedSegmentationWidgets/ next to this file)."""
    import MaskMedSegmentationWidgets

    return MaskMedSegmentationWidgets


def _importLogic():
    """The Logic package (MaskMedSegmentationLib/ next to this file), imported on first use, after maskmed_core is
    findable. It imports maskmed_core and torch only lazily, so it imports before the dependencies are installed."""
    _ensureMaskMedCoreImportable()
    import MaskMedSegmentationLib

    return MaskMedSegmentationLib


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
<li><b>Keep each class's largest piece</b>: drops stray blobs of a class away from its main region.</li>
</ul>
<p>Both update the segments at once, without running the network again. The query view shows what each object
query predicted. <b>Fine-tune</b> continues training the selected model on an nnU-Net dataset folder or on the
volume + segmentation pairs of the scene. The first time, open <b>Dependencies</b> and press
<b>Install dependencies</b>.</p>
<p>Reference: Xie and Agam (2025), "Decoupled Mask and Class Prediction for Medical Image Segmentation".</p>
"""
        self.parent.acknowledgementText = """
<p>MaskMed follows Xie and Agam (2025), "Decoupled Mask and Class Prediction for Medical Image Segmentation".</p>
<p>The demo CTs and their labels: subject s0009 of the TotalSegmentator dataset (Wasserthal J. et al.,
"TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images", Radiology: Artificial Intelligence,
2023; <a href="https://doi.org/10.5281/zenodo.6802613">doi:10.5281/zenodo.6802613</a>, CC BY 4.0), held out from the
default model's training; and a CT of the test data of TotalSegmentator
(<a href="https://github.com/wasserth/TotalSegmentator">github.com/wasserth/TotalSegmentator</a>, Apache License
2.0) whose labels are TotalSegmentator predictions. The default model also learned from label maps of that dataset
(CC BY 4.0).</p>
<p>PyTorch is installed through the SlicerPyTorch extension. The module layout follows SlicerMONAIAuto3DSeg.</p>
"""


#
# MaskMedSegmentationParameterNode
#


@parameterNodeWrapper
class MaskMedSegmentationParameterNode:
    """The panel's state, saved with the scene.

    Bound to the .ui widget whose SlicerParameterName is the field's name, except modelPath, device and
    fineTuneFromScene, which the widget keeps in step with its model and device boxes (their items are found at run
    time) and the two dataset radio buttons. modelPath "" is the bundled default model; a device that this computer
    lacks (a scene saved on a GPU machine) shows as Auto. The thresholds' defaults are the Logic's
    DEFAULT_QUERY_THRESHOLD and DEFAULT_CLASS_THRESHOLD (checked by Testing/test_slicer_module_static.py).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    queryThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.25
    classThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    largestComponent: bool = False
    testTimeAugmentation: bool = False
    fineTuneFromScene: bool = False
    fineTuneDatasetFolder: Path = Path.home()
    fineTuneOutputFolder: Path = Path.home() / "MaskMed" / "fine-tuning"
    fineTuneMinutes: Annotated[int, WithinRange(1, 1440)] = 10


class MaskMedSegmentationLogic(ScriptedLoadableModuleLogic):
    """Only the parameter node (Slicer's singleton per scene); everything else is MaskMedSegmentationLib's."""

    def getParameterNode(self):
        return MaskMedSegmentationParameterNode(super().getParameterNode())


#
# MaskMedSegmentationWidget
#


class MaskMedSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the widgets to the parameter node, calls the Logic, shows progress and results."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None  # MaskMedSegmentationLib.MaskMedLogic, created on the first Segment
        # (ok, message) of the last segmentation run, None while one runs; the self-test waits on it.
        self.lastSegmentationResult = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._updatingGui = False
        self._modelInfoPath = None
        self.unsupported = None  # set by setup(): why this Slicer cannot run the module, or None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.unsupported = unsupportedSlicerMessage()
        if self.unsupported:  # nothing below imports or runs on this Slicer
            label = qt.QLabel(self.unsupported)
            label.wordWrap = True
            self.layout.addWidget(label)
            logging.error(self.unsupported)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MaskMedSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level mrmlSceneChanged(vtkMRMLScene*) to each MRML widget's setMRMLScene.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.parameterLogic = MaskMedSegmentationLogic()

        # One timer polls whatever runs in a child process: segmentation, fine-tuning, the op build.
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.onPollTimer)
        # Sliders fire on every pixel of a drag: apply the thresholds once the slider rests for 50 ms.
        self.thresholdTimer = qt.QTimer()
        self.thresholdTimer.setSingleShot(True)
        self.thresholdTimer.setInterval(50)
        self.thresholdTimer.connect("timeout()", self.applyThresholds)

        self.fineTune = _importWidgets().FineTunePanel(
            self.ui, _importLogic(), self.pollTimer,
            lambda: (self._parameterNode, self.currentModelPath(), self.currentDevice()),
            self.selectModel, self.updateButtonStates)
        self.ui.progressBar.hide()
        self.resultTables = _importWidgets().ResultTables(self.ui.classTable, self.ui.queryTable,
                                                          _importLogic().segmentIdForClass)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.outputSegmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.segmentationShow3DButton.setSegmentationNode)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.browseModelButton.connect("clicked()", self.onBrowseModel)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceSelected)
        self.ui.fineTuneSceneRadioButton.connect("toggled(bool)", self.onFineTuneSourceToggled)
        self.ui.segmentButton.connect("clicked()", self.onSegmentButton)
        for slider in (self.ui.queryConfidenceSlider, self.ui.classConfidenceSlider):
            slider.connect("valueChanged(double)", lambda value: self.thresholdTimer.start())
        self.ui.largestComponentCheckBox.connect("toggled(bool)", lambda checked: self.thresholdTimer.start())
        self.ui.classTable.connect("itemChanged(QTableWidgetItem*)",
                                   lambda item: self.resultTables.onClassItemChanged(item, self._resultSession()))
        self.ui.queryTable.connect("itemChanged(QTableWidgetItem*)",
                                   lambda item: self.resultTables.onQueryItemChanged(item, self._resultSession()))
        self.dependencies = _importWidgets().DependencyPanel(self.ui, _importLogic(), self.pollTimer,
                                                             self.onDependenciesChecked)

        self.dependencies.check()
        self.initializeParameterNode()
        self.populateDevices()

    def cleanup(self):
        if self.unsupported:
            return
        self.pollTimer.stop()
        self.thresholdTimer.stop()
        if self.isSegmenting():
            self.logic.cancel()
        if self.fineTune.isRunning():
            self.fineTune.session.stop()
        self.removeObservers()

    def enter(self):
        if self.unsupported:
            return
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self.isSegmenting():  # the run would write into a node that is about to disappear
            self._cancelRequested = True
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self.resultTables.clear(None)  # the scene, with the query segments, is gone
        self.fineTune.lossPlot.hide()
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.parameterLogic.getParameterNode())
        if self._parameterNode.inputVolume is None:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode):
        """Bind the panel to ``parameterNode`` (None: unbind), as the Slicer module template does."""
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
            self.populateModels()
            self.updateGuiFromParameterNode()

    def updateGuiFromParameterNode(self, caller=None, event=None):
        """The widgets without a SlicerParameterName binding: model and device boxes, dataset radio buttons."""
        parameters = self._parameterNode
        self._updatingGui = True
        try:
            self._selectData(self.ui.modelComboBox, parameters.modelPath or self._defaultModelPath())
            self._selectData(self.ui.deviceComboBox, parameters.device)
            self.ui.fineTuneSceneRadioButton.checked = parameters.fineTuneFromScene
            self.ui.fineTuneFolderRadioButton.checked = not parameters.fineTuneFromScene
        finally:
            self._updatingGui = False
        self.showModelInfo()
        self.updateButtonStates()

    @staticmethod
    def _selectData(combo, data):
        """Select the item holding ``data`` (the first item if none does), without signals."""
        wasBlocked = combo.blockSignals(True)
        combo.setCurrentIndex(max(0, combo.findData(data)))
        combo.blockSignals(wasBlocked)

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
            hasVolume = self._parameterNode is not None and self._parameterNode.inputVolume is not None
            reasons = _importLogic().segmentBlockers(bool(self.dependencies.missing), hasVolume,
                                                     self.currentModelPath())
            self.ui.segmentButton.text = "Segment"
            self.ui.segmentButton.toolTip = "\n".join(reasons) if reasons else "Segment the input volume"
            self.ui.segmentButton.enabled = not reasons
        fineTuning = self.fineTune.isRunning()
        self.ui.fineTuneStartButton.text = "Stop fine-tuning" if fineTuning else "Start fine-tuning"
        self.ui.fineTuneStartButton.enabled = fineTuning or (not self.dependencies.missing
                                                             and bool(self.currentModelPath()))

    # ------------------------------------------------------------------ model and device

    def _defaultModelPath(self):
        return _importLogic().defaultModelPath() or ""

    def currentModelPath(self):
        combo = self.ui.modelComboBox
        return (combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None) or None

    def currentDevice(self):
        combo = self.ui.deviceComboBox
        return combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else "auto"

    def _fillCombo(self, combo, items, selected, toolTips=False):
        """Replace the items of ``combo`` by (text, data) ``items`` and select ``selected``, without signals."""
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for text, data in items:
            combo.addItem(text, data)
            if toolTips:
                combo.setItemData(combo.count - 1, data, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        self._selectData(combo, selected)

    def populateModels(self):
        """Bundled default model first, then the model files chosen or fine-tuned before (QSettings: they outlive
        scenes), then the scene's."""
        Logic = _importLogic()
        defaultPath = self._defaultModelPath()
        wanted = self.parameterLogic.getParameterNode().modelPath  # the panel may be unbound (a run ended)
        recent = Logic.recentModelPaths(qt.QSettings().value(SETTINGS_RECENT_MODELS, ""))
        choices = Logic.modelChoices(defaultPath, recent, wanted, label=Logic.modelLabel)
        self._fillCombo(self.ui.modelComboBox, choices, wanted or defaultPath, toolTips=True)
        self.showModelInfo()
        self.updateButtonStates()

    def onBrowseModel(self):
        current = self.currentModelPath()
        startFolder = os.path.dirname(current) if current else os.path.expanduser("~")
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Choose a MaskMed model", startFolder, "MaskMed model (*.maskmed);;All files (*)")
        if path:
            self.selectModel(path)

    def selectModel(self, path):
        """Remember ``path`` among the recent models and make it the parameter node's model."""
        stored = qt.QSettings().value(SETTINGS_RECENT_MODELS, "")
        qt.QSettings().setValue(SETTINGS_RECENT_MODELS, _importLogic().rememberModelPath(stored, path))
        self.parameterLogic.getParameterNode().modelPath = "" if path == self._defaultModelPath() else path
        self.populateModels()

    def onModelSelected(self, index):
        if not self._updatingGui:
            path = self.currentModelPath() or ""
            self._parameterNode.modelPath = "" if path == self._defaultModelPath() else path

    def showModelInfo(self):
        path = self.currentModelPath()
        if path == self._modelInfoPath:  # the parameter node changes with every slider move: read a file once
            return
        self._modelInfoPath = path
        if not path:
            self.ui.modelInfoLabel.text = "No model: choose a .maskmed file with the ... button."
            return
        try:
            self.ui.modelInfoLabel.text = _importLogic().modelInfo(path).description()
        except Exception as error:  # a damaged file, or maskmed_core not installed yet
            logging.warning(f"MaskMed: cannot read model {path}: {error}")
            self.ui.modelInfoLabel.text = f"Cannot read this model: {error}"

    def onDependenciesChecked(self):
        """After a dependency check: models and devices may have become readable (torch, maskmed_core installed)."""
        self.populateModels()
        self.populateDevices()

    def populateDevices(self):
        gpu, note = _importLogic().detectGpu()
        items = [(f"Auto (GPU: {gpu})" if gpu else "Auto (CPU: no GPU detected)", "auto"), ("CPU", "cpu")]
        items += [(f"GPU: {gpu}", "cuda")] if gpu else []
        self._fillCombo(self.ui.deviceComboBox, items, self.parameterLogic.getParameterNode().device)
        self.ui.deviceComboBox.toolTip = note

    def onDeviceSelected(self, index):
        if not self._updatingGui:
            self._parameterNode.device = self.currentDevice()

    def onFineTuneSourceToggled(self, fromScene):
        if not self._updatingGui:
            self._parameterNode.fineTuneFromScene = bool(fromScene)

    # ------------------------------------------------------------------ segmentation

    def onSegmentButton(self):
        if self.isSegmenting():
            self._cancelRequested = True
            self.ui.statusLabel.text = "Cancelling..."
            self.logic.cancel()  # calls onSegmentationFinished
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            try:
                self.startSegmentation()
            except Exception:
                self.ui.progressBar.hide()  # back to idle: nothing runs
                self.ui.statusLabel.text = "Failed to start the segmentation (details in the error message)."
                self.updateButtonStates()
                raise

    def startSegmentation(self):
        parameters = self._parameterNode
        if self.logic is None:
            self.logic = _importLogic().MaskMedLogic(slicer.mrmlScene)
        self.resultTables.clear(self._resultSession())
        self._cancelRequested = False
        self.lastSegmentationResult = None
        slicer.util.setSliceViewerLayers(background=parameters.inputVolume, fit=True)
        self.ui.progressBar.value = 0
        self.ui.progressBar.setFormat("Starting: %p%")
        self.ui.progressBar.show()
        self.ui.statusLabel.text = "Starting..."
        # outputSegmentation None: the Logic creates "<volume> MaskMed" once the run has succeeded.
        if self.logic.startSegmentation(
                parameters.inputVolume, self.currentModelPath(), self.currentDevice(),
                segmentationNode=parameters.outputSegmentation, queryThreshold=parameters.queryThreshold,
                classThreshold=parameters.classThreshold, largestComponent=parameters.largestComponent,
                testTimeAugmentation=parameters.testTimeAugmentation,
                onProgress=self.onSegmentationProgress, onFinished=self.onSegmentationFinished):
            self.pollTimer.start()  # a run that cannot start has already called onSegmentationFinished
        self.updateButtonStates()

    def onPollTimer(self):
        if self.logic is not None:
            self.logic.poll()  # calls onSegmentationFinished when the run ends
        fineTuning = self.fineTune.poll()  # finishes the run when it has ended
        installing = self.dependencies.poll()
        if not (self.isSegmenting() or fineTuning or installing):
            self.pollTimer.stop()

    def onSegmentationProgress(self, fraction, stage):
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.setFormat(f"{stage}: %p%")
        self.ui.statusLabel.text = f"{stage}..."

    def onSegmentationFinished(self, ok, message):
        self.lastSegmentationResult = (bool(ok), message)
        if ok:
            # The scene's parameter node even if the panel was left meanwhile (exit() unbinds _parameterNode).
            self.parameterLogic.getParameterNode().outputSegmentation = self.logic.segmentationNode
            self.ui.progressBar.value = 100
            self.ui.progressBar.setFormat("Done")
            self.ui.statusLabel.text = message  # "Segmented 13 of 15 classes in 42.0 s."
            warnings = _importLogic().warningsText(self.logic.warnings)  # e.g. the image looks mirrored left-right
            if warnings:
                self.ui.statusLabel.text = f"{message}\n\n{warnings}"
                logging.warning(f"MaskMed segmentation: {warnings}")
                if not slicer.app.testingEnabled():
                    slicer.util.warningDisplay(f"MaskMed segmented the volume, but check this:\n\n{warnings}")
            self.ui.resultsCollapsibleButton.collapsed = False
            self.applyThresholds()  # the sliders may have moved while it ran
        else:
            self.ui.progressBar.hide()
            elapsed = _importLogic().formatDuration(self.logic.elapsedSeconds)
            if self._cancelRequested:
                self.ui.statusLabel.text = f"Cancelled after {elapsed}."
            else:
                self.ui.statusLabel.text = f"Segmentation failed after {elapsed}: {message}"
                logging.error(f"MaskMed segmentation failed: {message}")
                if not slicer.app.testingEnabled():
                    slicer.util.errorDisplay(f"MaskMed segmentation failed:\n\n{message}")
        self._cancelRequested = False
        self.updateButtonStates()

    # ------------------------------------------------------------------ thresholds and result tables

    def _resultSession(self):
        """The ThresholdSession of the last result while its segmentation node is in the scene, else None."""
        session = self.logic.thresholdSession if self.logic is not None and not self.logic.isRunning() else None
        return session if session is not None and session.segmentationNode.GetScene() is not None else None

    def applyThresholds(self):
        session, parameters = self._resultSession(), self.parameterLogic.getParameterNode()
        if session is None:
            return
        thresholds = (parameters.queryThreshold, parameters.classThreshold, parameters.largestComponent)
        shown = (self.logic.queryThreshold, self.logic.classThreshold, self.logic.largestComponent)
        updated = self.logic.setThresholds(*thresholds) if thresholds != shown else []  # equal: already shown
        self.resultTables.update(session, *thresholds)
        if updated:
            self.ui.statusLabel.text = (f"Query confidence {parameters.queryThreshold:.2f}, class confidence "
                                        f"{parameters.classThreshold:.2f}: {len(updated)} segments updated.")


#
# MaskMedSegmentationTest
#


class MaskMedSegmentationTest(ScriptedLoadableModuleTest):
    """What "Reload and Test" runs: Testing/Python/MaskMedSegmentationSelfTest.py, loaded by path (Slicer scans the
    module folder, not its subfolders, for modules, so the self-test's file is not mistaken for one)."""

    def runTest(self):
        if unsupportedSlicerMessage():
            raise RuntimeError(unsupportedSlicerMessage())
        path = os.path.join(MODULE_DIR, "Testing", "Python", "MaskMedSegmentationSelfTest.py")
        spec = importlib.util.spec_from_file_location("MaskMedSegmentationSelfTest", path)
        selfTest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(selfTest)
        selfTest.MaskMedSegmentationSelfTest("runTest").runTest()
