# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Fine-tune a MaskMed model on cases segmented in the Slicer scene.

1. ``exportScenePairs`` writes (volume, segmentation) node pairs as an nnU-Net v2 raw dataset
   (``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, ``dataset.json``); segments become label values by
   name, on the volume's own voxel grid.
   ``prepareDataset`` is what the panel's Fine-tune button needs before that: the scene's pairs
   (``scenePairs``) exported into a new run folder, or a dataset folder checked.
2. ``start`` runs ``maskmed train DATASET -o OUT --init MODEL --epochs N --json`` as a child process
   (ChildRun); ``poll`` forwards its events, collects the loss per epoch and, on success, sets
   ``resultModelPath``; ``stop`` kills the child's whole process tree (the last completed epoch's files stay:
   ``maskmed train --resume`` continues).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk  # noqa: N813
import slicer
import vtk

from .childrun import ChildRun
from .maskmedlogic import formatDuration, modelInfo
from .volumeio import emptyOrientedImageLike, exportVolumeToFile, orientedImageArray, volumeShapeKji

if TYPE_CHECKING:
    from maskmed_core.events import Event, SummaryEvent

IMAGE_ENDING = ".nii.gz"
RUN_FOLDER_FORMAT = "maskmed-finetune-%Y%m%d-%H%M%S"


def _normalizedName(name: str) -> str:
    """The form in which two class names are the same class: maskmed_core.training.finetune.class_key's rule (lower
    case, '_' and '-' as spaces), so a segment "Left_Kidney" is the model's "left kidney" here as in training."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def scenePairs(scene) -> list[tuple]:
    """(volume, segmentation) for every non-empty segmentation node whose reference geometry is a scalar volume
    (what Segment and Segment Editor leave behind), in scene order."""
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    pairs = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        segmentationNode = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        volumeNode = segmentationNode.GetNodeReference(role)
        if (volumeNode is not None and volumeNode.IsA("vtkMRMLScalarVolumeNode")
                and segmentationNode.GetSegmentation().GetNumberOfSegments() > 0):
            pairs.append((volumeNode, segmentationNode))
    return pairs


def _caseName(name: str, used: set[str]) -> str:
    """A file-safe, unique case name (nnU-Net: letters, digits, '.', '_', '-'; no trailing channel suffix)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "case"
    if not base[0].isalnum():
        base = f"case_{base}"
    base = re.sub(r"_\d{4}$", "", base)
    candidate, number = base, 1
    while candidate.lower() in used:
        number += 1
        candidate = f"{base}_{number}"
    used.add(candidate.lower())
    return candidate


def segmentationLabelArray(segmentationNode, volumeNode, nameToLabel: dict[str, int]) -> tuple[np.ndarray, list[str]]:
    """[k, j, i] label array on the volume's grid from the segments whose names are in ``nameToLabel``.

    Names match case-insensitively. Each segment's binary labelmap (of a shared layer: only its own label
    value) is resampled onto the volume's grid with nearest neighbour, through the transforms between the
    segmentation's and the volume's parent frames; later segments overwrite earlier ones where they overlap.
    Returns (labels, names of segments that were skipped because no class has their name).
    """
    lookup = {_normalizedName(k): int(v) for k, v in nameToLabel.items()}
    maxLabel = max(lookup.values(), default=1)
    dtype = np.uint8 if maxLabel < 256 else np.uint16
    labels = np.zeros(volumeShapeKji(volumeNode), dtype=dtype)
    reference = emptyOrientedImageLike(volumeNode, vtk.VTK_UNSIGNED_CHAR)
    segmentation = segmentationNode.GetSegmentation()
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        segmentationNode.GetParentTransformNode(), volumeNode.GetParentTransformNode(), transform
    )
    skipped: list[str] = []
    for segmentId in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(segmentId)
        label = lookup.get(_normalizedName(segment.GetName()))
        if label is None:
            skipped.append(segment.GetName())
            continue
        source = slicer.vtkOrientedImageData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentationNode, segmentId, source, False
        ):
            continue  # no binary labelmap (an empty segment)
        if source.GetPointData().GetScalars() is None:
            continue
        resampled = slicer.vtkOrientedImageData()
        ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            source, reference, resampled, False, False, transform, 0
        )
        if not ok:
            raise ValueError(f"segment {segment.GetName()!r} could not be resampled onto {volumeNode.GetName()!r}")
        values = orientedImageArray(resampled)
        labels[values == segment.GetLabelValue()] = label
    return labels, skipped


def _newSegmentClasses(pairs: list[tuple], nameToLabel: dict[str, int]) -> list:
    """SegmentClass (maskmed_core.classes) for each segment name of ``pairs`` that no class of ``nameToLabel`` has:
    the next free label values, the segment's colour (0..1 -> 0..255) and its terminology tag where it reads."""
    from maskmed_core.classes import SegmentClass, Terminology

    from .segmentationwriter import terminologyTagName

    known = {_normalizedName(name) for name in nameToLabel}
    nextLabel = max(nameToLabel.values(), default=0) + 1
    classes = []
    for _, segmentationNode in pairs:
        segmentation = segmentationNode.GetSegmentation()
        for segmentId in segmentation.GetSegmentIDs():
            segment = segmentation.GetSegment(segmentId)
            name = segment.GetName()
            if _normalizedName(name) in known:
                continue
            known.add(_normalizedName(name))
            red, green, blue = (int(round(255 * min(1.0, max(0.0, c)))) for c in segment.GetColor())
            tag = vtk.reference("")
            terminology = Terminology.from_slicer_tag(str(tag)) if segment.GetTag(terminologyTagName(segment), tag) \
                else None
            classes.append(SegmentClass(nextLabel, name, (red, green, blue), terminology))
            nextLabel += 1
    return classes


class FineTuneSession(ChildRun):
    """Export scene cases, run ``maskmed train`` on them, report progress, give the new model file.

    Attributes: ``lossHistory`` (mean training loss per epoch), ``diceHistory`` (mean validation Dice per
    validated epoch: (epoch, dice)), ``resultModelPath`` (best.maskmed after a successful run, else None),
    ``returncode``, ``lastError``, ``warnings`` (from the export), ``summary`` (the child's final SummaryEvent).
    """

    def __init__(self):
        super().__init__()
        self.lossHistory: list[float] = []
        self.diceHistory: list[tuple[int, float]] = []
        self.resultModelPath: str | None = None
        self.lastError = ""
        self.warnings: list[str] = []
        self.newClasses: list[str] = []  # classes the scene export added (segments no model class names)
        self.summary: SummaryEvent | None = None
        self.outputFolder: Path | None = None
        self._onEvent: Callable[[Event], None] | None = None

    # ----- dataset -------------------------------------------------------------------------------------
    def prepareDataset(self, scene, outputFolder: str | Path, initModel: str | Path,
                       datasetFolder: str | Path | None = None, now: float | None = None) -> tuple[Path, Path]:
        """A new run folder under ``outputFolder`` and the dataset to train on; returns (runFolder, dataset).

        datasetFolder: an nnU-Net v2 raw folder (must hold dataset.json), or None for the scene's pairs
        (:func:`scenePairs`), exported into ``runFolder/dataset`` with the classes of ``initModel``.
        Raises ValueError with a message for the user when there is nothing to train on.
        """
        if datasetFolder is not None and not (Path(datasetFolder) / "dataset.json").is_file():
            raise ValueError(f"{datasetFolder} is not an nnU-Net v2 raw dataset folder (it has no dataset.json).")
        pairs = scenePairs(scene) if datasetFolder is None else []
        if datasetFolder is None and not pairs:
            raise ValueError("No segmentation in the scene has a volume as its reference geometry. Segment a "
                             "volume (and correct the result in Segment Editor), or choose a dataset folder.")
        runFolder = Path(outputFolder) / time.strftime(RUN_FOLDER_FORMAT, time.localtime(now))
        labels = modelInfo(initModel).labelsByName() if datasetFolder is None else {}  # a bad model: nothing made
        created = not runFolder.exists()
        runFolder.mkdir(parents=True, exist_ok=True)
        if datasetFolder is not None:
            return runFolder, Path(datasetFolder)
        try:
            return runFolder, self.exportScenePairs(pairs, runFolder / "dataset", labels)
        except BaseException:
            if created:  # no run folder without its dataset
                shutil.rmtree(runFolder, ignore_errors=True)
            raise

    def exportScenePairs(self, pairs: Iterable[tuple], folder: str | Path, nameToLabel: dict[str, int] | None) -> Path:
        """Write (volumeNode, segmentationNode) pairs as an nnU-Net v2 raw dataset in ``folder``; returns it.

        nameToLabel: class name -> label value (``ModelInfo.labelsByName()`` of the model to fine-tune), or None.
        Segments are matched to those classes by name, ignoring case and spacing; a segment with another name is a
        new class (the next free label value, in order of appearance), whose colour and terminology go into the
        dataset's ``maskmed_classes`` so the fine-tuned model keeps them (``self.newClasses`` lists their names).
        Images keep their voxels and exact geometry; label maps are on the same grid. All or nothing: the files are
        written into a hidden sibling folder, each checked complete (a full disk can leave a short file without an
        error), and the folder renamed to ``folder`` at the end; on any error it is removed and ``folder`` not made.
        """
        pairs = list(pairs)
        if not pairs:
            raise ValueError("no (volume, segmentation) pairs to export")
        nameToLabel = {name: int(value) for name, value in (nameToLabel or {}).items() if int(value) != 0}
        newClasses = _newSegmentClasses(pairs, nameToLabel)
        nameToLabel.update({segmentClass.name: segmentClass.label for segmentClass in newClasses})
        self.newClasses = [segmentClass.name for segmentClass in newClasses]
        if not nameToLabel:
            raise ValueError("the segmentations have no segments to train on")
        folder = Path(folder)
        if folder.exists():
            raise ValueError(f"{folder} exists already: export into a new folder")
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # a previous export that died
        try:
            self._writeDataset(pairs, partial, folder.name, nameToLabel, newClasses)
            partial.rename(folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return folder

    def _writeDataset(self, pairs: list[tuple], folder: Path, name: str, nameToLabel: dict[str, int],
                      newClasses: list) -> None:
        """The nnU-Net v2 raw dataset of ``pairs`` in ``folder`` (see exportScenePairs), each file checked."""
        from maskmed_core.io.nifti_header import check_nifti_complete

        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir(parents=True)
        self.warnings = []
        used: set[str] = set()
        for volumeNode, segmentationNode in pairs:
            case = _caseName(volumeNode.GetName() or "case", used)
            labels, skipped = segmentationLabelArray(segmentationNode, volumeNode, nameToLabel)
            if skipped:
                self.warnings.append(
                    f"{segmentationNode.GetName()}: segments without a matching class were left out: "
                    + ", ".join(sorted(set(skipped)))
                )
            if not labels.any():
                self.warnings.append(f"{case}: no labelled voxel (all background)")
            imagePath = exportVolumeToFile(volumeNode, folder / "imagesTr" / f"{case}_0000{IMAGE_ENDING}")
            # The label map copies the written image's geometry, so the two grids agree to the last bit.
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(imagePath))
            reader.ReadImageInformation()
            labelImage = sitk.GetImageFromArray(labels)
            labelImage.SetOrigin(reader.GetOrigin())
            labelImage.SetSpacing(reader.GetSpacing())
            labelImage.SetDirection(reader.GetDirection())
            labelPath = folder / "labelsTr" / f"{case}{IMAGE_ENDING}"
            sitk.WriteImage(labelImage, str(labelPath), useCompression=True)
            for written in (imagePath, labelPath):
                check_nifti_complete(written)
        dataset = {
            "name": name,
            "description": "exported from 3D Slicer by MaskMedSegmentation",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{name: int(value) for name, value in nameToLabel.items()}},
            "numTraining": len(used),
            "file_ending": IMAGE_ENDING,
            "maskmed_classes": [segmentClass.to_dict() for segmentClass in newClasses],
        }
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")

    # ----- training ------------------------------------------------------------------------------------
    def start(
        self,
        datasetPath: str | Path,
        outputFolder: str | Path,
        initModel: str | Path | None,
        minutes: float,
        device: str,
        onEvent: Callable[[Event], None] | None = None,
        extraArgs: list[str] | None = None,
    ) -> None:
        """Start ``maskmed train`` (fine-tuning from ``initModel``; None trains from scratch) for ``minutes`` of
        training time (``--time-limit``: it then validates and keeps its best model).

        onEvent receives every event of the child (StepEvent, EpochEvent, MessageEvent, SummaryEvent, LogEvent),
        from poll(). extraArgs: further ``maskmed train`` options, e.g. ["--steps-per-epoch", "10"].
        """
        if self.isRunning():
            raise RuntimeError("a fine-tuning run is already going; stop it first")
        self.lossHistory, self.diceHistory, self.summary = [], [], None
        self.resultModelPath, self.lastError = None, ""
        self.outputFolder = Path(outputFolder)
        arguments = ["train", str(datasetPath), "-o", str(outputFolder), "--time-limit", f"{float(minutes):g}",
                     "--device", device, "--json"]
        if initModel:
            arguments += ["--init", str(initModel)]
        arguments += [str(a) for a in extraArgs or ()]
        self._onEvent = onEvent
        self.startChild(arguments, device)

    # poll() and wait() come from ChildRun; at the end they set returncode and resultModelPath or lastError.

    def stop(self) -> None:
        """Cancel: kill the child's whole process tree (training workers included)."""
        self.cancel()

    def onChildCancelled(self) -> None:
        """Stopped: the best model so far (best.maskmed, else the last epoch's last.maskmed) is still the result."""
        from maskmed_core.training.run_files import BEST_MODEL, LAST_MODEL

        assert self.outputFolder is not None
        kept = [path for path in (self.outputFolder / BEST_MODEL, self.outputFolder / LAST_MODEL) if path.is_file()]
        self.resultModelPath = str(kept[0]) if kept else None
        self.lastError = "Stopped." if kept else "Stopped before the first epoch ended: no model was written."

    def onChildExit(self, code: int | None, details: str) -> None:
        if code == 0:
            from maskmed_core.training.run_files import BEST_MODEL, LAST_MODEL

            assert self.outputFolder is not None
            best = Path(self.summary.best_model if self.summary else self.outputFolder / BEST_MODEL)
            last = Path(self.summary.last_model if self.summary else self.outputFolder / LAST_MODEL)
            chosen = best if best.is_file() else last if last.is_file() else None
            self.resultModelPath = str(chosen) if chosen else None
            if chosen is None:
                self.lastError = "training finished but wrote no model file"
        else:
            self.lastError = f"maskmed train stopped with exit code {code}" + (f": {details}" if details else "")

    def onChildEvent(self, event: Event) -> None:
        from maskmed_core.events import EpochEvent, SummaryEvent

        if isinstance(event, EpochEvent):
            self.lossHistory.append(event.loss)
            if event.mean_dice is not None:
                self.diceHistory.append((event.epoch, event.mean_dice))
        elif isinstance(event, SummaryEvent):
            self.summary = event
        if self._onEvent is not None:
            self._onEvent(event)


def describeTrainingEvent(event: Event) -> tuple[int | None, str | None]:
    """What the panel shows for one event of ``maskmed train``: (progress bar percent, status text), each None
    when the event does not change it."""
    from maskmed_core.events import EpochEvent, MessageEvent, StepEvent

    if isinstance(event, StepEvent):
        text = f"Step {event.step}/{event.total}: loss {event.loss:.4f}"
        if event.remaining is None:  # a writer without the field: progress by steps
            return int(100 * event.step / max(1, event.total)), text
        # Time, not steps: a run with a time limit ends long before its last step.
        done = event.elapsed / max(1e-9, event.elapsed + event.remaining)
        return int(100 * done), f"{text}, {formatDuration(event.remaining)} left"
    if isinstance(event, EpochEvent):
        dice = f", validation Dice {event.mean_dice:.3f}" if event.mean_dice is not None else ""
        return None, f"Epoch {event.epoch}: loss {event.loss:.4f}{dice}"
    if isinstance(event, MessageEvent):
        return None, event.text
    return None, None


class LossCurve:
    """The training loss per epoch as MRML nodes for the panel's plot view: a table (epoch, loss), a scatter
    series, a chart and a plot view node (``viewNode``). Created in ``scene`` by the first ``update`` with
    losses, and again if a scene close removed them."""

    def __init__(self, scene):
        self.scene = scene
        self.tableNode = None
        self.viewNode = None

    def update(self, losses: list[float]) -> None:
        if not losses:
            return
        if self.tableNode is None or self.tableNode.GetScene() is None:
            self._createNodes()
        assert self.tableNode is not None
        columns = []
        for name, values in (("epoch", range(1, len(losses) + 1)), ("loss", losses)):
            column = vtk.vtkDoubleArray()
            column.SetName(name)
            for value in values:
                column.InsertNextValue(float(value))
            columns.append(column)
        table = self.tableNode.GetTable()
        table.RemoveAllColumns()
        for column in columns:
            table.AddColumn(column)
        self.tableNode.Modified()

    def _createNodes(self) -> None:
        scene = self.scene
        self.tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", "MaskMed fine-tuning loss")
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "MaskMed training loss")
        series.SetAndObserveTableNodeID(self.tableNode.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName("loss")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "MaskMed fine-tuning loss")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetXAxisTitle("epoch")
        chart.SetYAxisTitle("training loss")
        chart.SetLegendVisibility(False)
        self.viewNode = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
        self.viewNode.SetPlotChartNodeID(chart.GetID())
