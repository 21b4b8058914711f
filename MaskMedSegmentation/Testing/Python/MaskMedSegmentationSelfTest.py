# ruff: noqa: N802, N803, N806, N815
# (Slicer's own style: camelCase, as in every Slicer module.)
"""The MaskMed panel's self-test, driven as a user drives it, inside Slicer: "Reload and Test" in the module panel
(through ``MaskMedSegmentationTest`` in MaskMedSegmentation.py) or ctest (``slicer_add_python_unittest``).

1. The panel's state (parameter node) is saved with the scene and restored from it.
2. A real CT (the bundled demo CT) is segmented through the panel's buttons, re-thresholded with the sliders, its
   class and query tables driven, and a run cancelled right after it started leaves the scene as it was.

The segmentation test skips (with a message) when the dependencies or the model are missing.
"""

import importlib.util
import os
import time

import numpy as np
import qt
import slicer
from MaskMedSegmentationWidgets import resulttables
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

import MaskMedSegmentation as Module


class MaskMedSegmentationSelfTest(ScriptedLoadableModuleTest):
    """The panel as a user drives it (see the file's docstring)."""

    SEGMENTATION_TIMEOUT_S = 3600

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PanelStateIsSavedWithTheScene()
        self.setUp()
        self.test_SegmentThroughWidget()

    def _processEventsFor(self, seconds, until=lambda: False):
        """Process Qt events (the widget's timers) until ``until()`` is true or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            slicer.app.processEvents()
            time.sleep(0.02)
        return until()

    def _demoVolume(self):
        Module._ensureMaskMedCoreImportable()
        core = os.path.dirname(importlib.util.find_spec("maskmed_core").origin)
        return slicer.util.loadVolume(os.path.join(core, "resources", "demo", "abdomen_ct_3mm.nii.gz"))

    def test_PanelStateIsSavedWithTheScene(self):
        self.delayDisplay("MaskMed self-test: the panel's parameter node is saved and restored with the scene")
        widget = slicer.modules.maskmedsegmentation.widgetRepresentation().self()
        slicer.util.selectModule("MaskMedSegmentation")
        volume = self._demoVolume()
        parameters = widget._parameterNode
        parameters.inputVolume = volume
        parameters.queryThreshold, parameters.device, parameters.fineTuneFromScene = 0.4, "cpu", True
        self.assertEqual(widget.ui.queryConfidenceSlider.value, 0.4)  # parameter node -> widgets
        self.assertEqual(widget.currentDevice(), "cpu")
        self.assertTrue(widget.ui.fineTuneSceneRadioButton.checked)
        widget.ui.classConfidenceSlider.value = 0.7  # widgets -> parameter node
        widget.ui.fineTuneMinutesSpinBox.value = 3
        widget.ui.fineTuneFolderRadioButton.checked = True
        widget.ui.largestComponentCheckBox.checked = True
        widget.ui.testTimeAugmentationCheckBox.checked = True
        self.assertEqual((parameters.classThreshold, parameters.fineTuneMinutes), (0.7, 3))
        self.assertTrue(parameters.largestComponent and parameters.testTimeAugmentation)
        self.assertFalse(parameters.fineTuneFromScene)

        path = os.path.join(slicer.app.temporaryPath, "MaskMedParameterNodeTest.mrb")
        self.assertTrue(slicer.util.saveScene(path))
        slicer.mrmlScene.Clear()
        self.assertEqual(widget.ui.classConfidenceSlider.value, 0.5)  # a new scene: the defaults
        self.assertFalse(widget.ui.largestComponentCheckBox.checked or widget.ui.testTimeAugmentationCheckBox.checked)
        slicer.util.loadScene(path)
        self._processEventsFor(0.2)
        self.assertEqual(widget.ui.inputVolumeSelector.currentNode().GetName(), volume.GetName())
        self.assertEqual((widget.ui.queryConfidenceSlider.value, widget.ui.classConfidenceSlider.value), (0.4, 0.7))
        self.assertEqual((widget.ui.fineTuneMinutesSpinBox.value, widget.currentDevice()), (3, "cpu"))
        self.assertTrue(widget.ui.fineTuneFolderRadioButton.checked)
        self.assertTrue(widget.ui.largestComponentCheckBox.checked and widget.ui.testTimeAugmentationCheckBox.checked)
        os.remove(path)
        self.delayDisplay("MaskMed self-test passed: the scene restored the panel")

    def _segmentedVoxels(self, segmentationNode, volumeNode, classNames):
        """Number of voxels of the volume's grid that belong to a class segment."""
        labels, _ = Module._importLogic().segmentationLabelArray(
            segmentationNode, volumeNode, {name: number for number, name in enumerate(classNames, 1)})
        return int(np.count_nonzero(labels))

    def test_SegmentThroughWidget(self):
        self.delayDisplay("MaskMed self-test: segment a CT through the module panel")
        widget = slicer.modules.maskmedsegmentation.widgetRepresentation().self()
        slicer.util.selectModule("MaskMedSegmentation")
        missing = widget.dependencies.check()
        if missing:
            self.delayDisplay("MaskMed self-test skipped: dependencies are missing ("
                              + ", ".join(m.name for m in missing) + "). Install them in the Dependencies section.")
            return
        modelPath = widget.currentModelPath()
        self.assertTrue(modelPath, "the bundled default model was not found")
        volumeNode = self._demoVolume()
        widget.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        widget.ui.outputSegmentationSelector.setCurrentNode(None)
        widget.ui.queryConfidenceSlider.value = 0.25
        widget.ui.classConfidenceSlider.value = 0.5
        widget.ui.largestComponentCheckBox.checked = False
        widget.ui.testTimeAugmentationCheckBox.checked = False  # one pass: the earlier test may have left it on
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
        segmentation = segmentationNode.GetSegmentation()
        classNames = [c.name for c in Module._importLogic().modelInfo(modelPath).classes]
        self.assertEqual(segmentation.GetNumberOfSegments(), len(classNames))
        for name in classNames:
            self.assertTrue(segmentation.GetSegmentIdBySegmentName(name), f"no segment named {name!r}")
        self.assertEqual(widget.ui.classTable.rowCount, len(classNames))
        self.assertGreater(widget.ui.queryTable.rowCount, 0)

        before = self._segmentedVoxels(segmentationNode, volumeNode, classNames)
        self.assertGreater(before, 0, "the segmentation is empty")
        self.delayDisplay("Raising the class confidence threshold to 0.95")
        widget.ui.classConfidenceSlider.value = 0.95
        self._processEventsFor(1.0)  # the 50 ms debounce, then the update
        after = self._segmentedVoxels(segmentationNode, volumeNode, classNames)
        self.assertLess(after, before, "raising the class confidence threshold did not shrink the segments")
        self.delayDisplay("Keeping each class's largest piece, then every piece again")
        widget.ui.largestComponentCheckBox.checked = True
        self._processEventsFor(1.0)
        self.assertLessEqual(self._segmentedVoxels(segmentationNode, volumeNode, classNames), after)
        self.assertTrue(widget.logic.largestComponent, "the check box did not reach the Logic")
        widget.ui.largestComponentCheckBox.checked = False
        self._processEventsFor(1.0)
        self.assertEqual(self._segmentedVoxels(segmentationNode, volumeNode, classNames), after)

        self.delayDisplay("The tables: hide a class, show and hide a query's own mask")
        displayNode = segmentationNode.GetDisplayNode()
        firstClass = widget.ui.classTable.item(0, resulttables.CLASS_SHOW)
        firstClass.setCheckState(qt.Qt.Unchecked)
        self.assertFalse(displayNode.GetSegmentVisibility(Module._importLogic().segmentIdForClass(firstClass.data(qt.Qt.UserRole))))
        segments = segmentation.GetNumberOfSegments()
        widget.ui.queryTable.item(0, resulttables.QUERY_SHOW).setCheckState(qt.Qt.Checked)
        self.assertEqual(segmentation.GetNumberOfSegments(), segments + 1)
        widget.ui.queryTable.item(0, resulttables.QUERY_SHOW).setCheckState(qt.Qt.Unchecked)
        self.assertEqual(segmentation.GetNumberOfSegments(), segments)

        self.delayDisplay("Cancel right after Segment: the scene stays as it was")
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        widget.ui.outputSegmentationSelector.setCurrentNode(None)
        widget.ui.segmentButton.click()
        widget.ui.segmentButton.click()
        self.assertEqual(widget.lastSegmentationResult, (False, "Cancelled."))
        self.assertTrue(widget.ui.statusLabel.text.startswith("Cancelled after"))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.delayDisplay(f"MaskMed self-test passed ({before} -> {after} segmented voxels)")
