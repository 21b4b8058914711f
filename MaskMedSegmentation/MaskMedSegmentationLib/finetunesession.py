# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Fine-tune a MaskMed model on cases segmented in the Slicer scene.

1. ``exportScenePairs`` writes (volume, segmentation) node pairs as an nnU-Net v2 raw dataset
   (``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, ``dataset.json``); segments become label values by
   name, on the volume's own voxel grid.
2. ``start`` runs ``maskmed train DATASET -o OUT --init MODEL --epochs N --json`` as a child process
   (BackgroundProcess); ``poll`` forwards its events, collects the loss per epoch and, on success, sets
   ``resultModelPath``; ``stop`` kills the child's whole process tree (the last completed epoch's files stay:
   ``maskmed train --resume`` continues).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
import slicer
import vtk

from .process import BackgroundProcess, childEnvironment, maskmedCommand
from .volumeio import emptyOrientedImageLike, exportVolumeToFile, orientedImageArray, volumeShapeKji

IMAGE_ENDING = ".nii.gz"


def _normalizedName(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


def _labelsFromClasses(classes) -> dict[str, int]:
    """name -> label value from SegmentClass objects, a {name: value} mapping or a list of names (1, 2, ...)."""
    if classes is None:
        return {}
    if isinstance(classes, dict):
        return {str(k): int(v) for k, v in classes.items() if int(v) != 0}
    labels: dict[str, int] = {}
    for index, item in enumerate(classes):
        if isinstance(item, str):
            labels[item] = index + 1
        else:
            labels[str(item.name)] = int(item.label)
    return labels


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


class FineTuneSession:
    """Export scene cases, run ``maskmed train`` on them, report progress, give the new model file.

    Attributes: ``lossHistory`` (mean training loss per epoch), ``diceHistory`` (mean validation Dice per
    validated epoch: (epoch, dice)), ``resultModelPath`` (best.maskmed after a successful run, else None),
    ``returncode``, ``lastError``, ``warnings`` (from the export), ``summary`` (the child's final summary event).
    """

    def __init__(self):
        self.lossHistory: list[float] = []
        self.diceHistory: list[tuple[int, float]] = []
        self.resultModelPath: str | None = None
        self.returncode: int | None = None
        self.lastError = ""
        self.warnings: list[str] = []
        self.summary: dict = {}
        self.outputFolder: Path | None = None
        self._process: BackgroundProcess | None = None
        self._onEvent: Callable[[dict], None] | None = None
        self._errors: list[str] = []

    # ----- dataset -------------------------------------------------------------------------------------
    def exportScenePairs(self, pairs: Iterable[tuple], folder: str | Path, classes) -> Path:
        """Write (volumeNode, segmentationNode) pairs as an nnU-Net v2 raw dataset in ``folder``; returns it.

        classes: the model's classes (list of SegmentClass), a {name: label value} mapping, a list of names
        (labels 1, 2, ... in order), or None for the segment names found in the pairs (in order of appearance).
        Segments are matched to classes by name, case-insensitively; others are skipped and listed in
        ``self.warnings``. Images keep their voxels and exact geometry; label maps are on the same grid.
        """
        pairs = list(pairs)
        if not pairs:
            raise ValueError("no (volume, segmentation) pairs to export")
        nameToLabel = _labelsFromClasses(classes)
        if not nameToLabel:
            for _, segmentationNode in pairs:
                segmentation = segmentationNode.GetSegmentation()
                for segmentId in segmentation.GetSegmentIDs():
                    name = segmentation.GetSegment(segmentId).GetName()
                    if _normalizedName(name) not in {_normalizedName(n) for n in nameToLabel}:
                        nameToLabel[name] = len(nameToLabel) + 1
        if not nameToLabel:
            raise ValueError("the segmentations have no segments to train on")
        folder = Path(folder)
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
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
            sitk.WriteImage(labelImage, str(folder / "labelsTr" / f"{case}{IMAGE_ENDING}"), useCompression=True)
        dataset = {
            "name": folder.name,
            "description": "exported from 3D Slicer by MaskMedSegmentation",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{name: int(value) for name, value in nameToLabel.items()}},
            "numTraining": len(used),
            "file_ending": IMAGE_ENDING,
        }
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
        return folder

    # ----- training ------------------------------------------------------------------------------------
    def start(
        self,
        datasetPath: str | Path,
        outputFolder: str | Path,
        initModel: str | Path | None,
        epochs: int,
        device: str,
        onEvent: Callable[[dict], None] | None = None,
        extraArgs: list[str] | None = None,
    ) -> None:
        """Start ``maskmed train`` (fine-tuning from ``initModel``; None trains from scratch).

        onEvent receives every event of the child (step, epoch, message, summary, log), from poll().
        extraArgs: further ``maskmed train`` options, e.g. ["--steps-per-epoch", "10", "--freeze-encoder"].
        """
        if self.isRunning():
            raise RuntimeError("a fine-tuning run is already going; stop it first")
        self.lossHistory, self.diceHistory, self.summary = [], [], {}
        self.resultModelPath, self.returncode, self.lastError, self._errors = None, None, "", []
        self.outputFolder = Path(outputFolder)
        arguments = ["train", str(datasetPath), "-o", str(outputFolder), "--epochs", str(int(epochs)),
                     "--device", device, "--json"]
        if initModel:
            arguments += ["--init", str(initModel)]
        arguments += [str(a) for a in extraArgs or ()]
        self._onEvent = onEvent
        self._process = BackgroundProcess(maskmedCommand(*arguments), env=childEnvironment(device),
                                          onEvent=self._handle)
        self._process.start()

    def isRunning(self) -> bool:
        return self._process is not None

    def poll(self) -> bool:
        """Forward events; True while training runs. At the end sets returncode and resultModelPath/lastError."""
        if self._process is None:
            return False
        if self._process.poll():
            return True
        process, self._process = self._process, None
        self.returncode = process.returncode
        if self.returncode == 0:
            best = Path(self.summary.get("best_model") or self.outputFolder / "best.maskmed")
            last = Path(self.summary.get("last_model") or self.outputFolder / "last.maskmed")
            chosen = best if best.is_file() else last if last.is_file() else None
            self.resultModelPath = str(chosen) if chosen else None
            if chosen is None:
                self.lastError = "training finished but wrote no model file"
        else:
            details = "; ".join(self._errors) or " | ".join(process.stderrText().strip().splitlines()[-5:])
            self.lastError = f"maskmed train stopped with exit code {self.returncode}" + (
                f": {details}" if details else ""
            )
        return False

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until training ends (tests, scripts); returns the exit code."""
        if self._process is not None:
            self._process.wait(timeout)
        self.poll()
        return self.returncode

    def stop(self) -> None:
        """Cancel: kill the child's whole process tree (training workers included)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.cancel()
        self.returncode = process.returncode
        self.lastError = "Stopped."

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "epoch":
            self.lossHistory.append(float(event.get("loss", float("nan"))))
            if "mean_dice" in event:
                self.diceHistory.append((int(event.get("epoch", len(self.lossHistory))), float(event["mean_dice"])))
        elif kind == "summary":
            self.summary = dict(event)
        elif kind == "message" and event.get("level") == "error":
            self._errors.append(str(event.get("text", "")))
        if self._onEvent is not None:
            self._onEvent(event)
