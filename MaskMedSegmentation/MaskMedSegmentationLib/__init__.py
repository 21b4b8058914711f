# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""MaskMedSegmentation Logic: everything the panel does, testable without the Slicer application.

Uses only MRML/VTK classes present both in Slicer and in the Qt-free ``slicer-core`` wheel, plus numpy,
SimpleITK and (lazily, so that this package imports before the dependencies are installed) maskmed_core and
torch. Never imports qt, ctk, slicer.util or slicer.app: those belong to the widget.

Imported as ``MaskMedSegmentationLib`` (the module folder is on sys.path inside Slicer, shared with every other
module: hence the module-specific name); all imports inside are relative.
"""

from .childrun import ChildRun
from .dependencies import (
    OPTIONAL_REQUIREMENTS,
    REQUIREMENTS,
    SLICER_PACKAGES,
    InstallStep,
    MissingDependency,
    StepKind,
    dependencyStatus,
    describeMissing,
    detectGpu,
    installConfirmation,
    installedVersion,
    installPlan,
    missingDependencies,
    versionAtLeast,
)
from .finetunesession import FineTuneSession, LossCurve, describeTrainingEvent, scenePairs, segmentationLabelArray
from .installer import DependencyInstaller, InstallActions, InstallOutcome, installTorchWithSlicerExtension
from .maskmedlogic import (
    DEFAULT_CLASS_THRESHOLD,
    DEFAULT_QUERY_THRESHOLD,
    MaskMedLogic,
    ModelClass,
    ModelInfo,
    defaultModelPath,
    formatDuration,
    modelInfo,
    modelLabel,
    warningsText,
)
from .panelchoices import (
    DEFAULT_MODEL_LABEL,
    modelChoices,
    recentModelPaths,
    rememberModelPath,
    segmentBlockers,
)
from .process import BackgroundProcess, childEnvironment, maskmedCommand, pythonExecutable
from .segmentationwriter import (
    QUERY_SEGMENT_ID_PREFIX,
    SEGMENT_ID_PREFIX,
    placeUnderVolumeStudy,
    segmentIdForClass,
    terminologyTagName,
    updateSegmentationFromLabelImage,
)
from .thresholdsession import TableRow, ThresholdSession
from .volumeio import (
    exportVolumeToFile,
    ijkToLpsMatrix,
    ijkToRasMatrix,
    imageToVolumeNode,
    importLabelImage,
    labelArrayOnVolumeGrid,
    readVolumeFile,
    volumeArray,
    volumeToImage,
)

__all__ = [
    "DEFAULT_CLASS_THRESHOLD",
    "DEFAULT_MODEL_LABEL",
    "DEFAULT_QUERY_THRESHOLD",
    "OPTIONAL_REQUIREMENTS",
    "QUERY_SEGMENT_ID_PREFIX",
    "REQUIREMENTS",
    "SEGMENT_ID_PREFIX",
    "SLICER_PACKAGES",
    "BackgroundProcess",
    "ChildRun",
    "DependencyInstaller",
    "FineTuneSession",
    "InstallActions",
    "InstallOutcome",
    "InstallStep",
    "LossCurve",
    "MaskMedLogic",
    "MissingDependency",
    "ModelClass",
    "ModelInfo",
    "StepKind",
    "TableRow",
    "ThresholdSession",
    "childEnvironment",
    "defaultModelPath",
    "dependencyStatus",
    "describeMissing",
    "describeTrainingEvent",
    "detectGpu",
    "exportVolumeToFile",
    "formatDuration",
    "ijkToLpsMatrix",
    "ijkToRasMatrix",
    "imageToVolumeNode",
    "importLabelImage",
    "installConfirmation",
    "installPlan",
    "installTorchWithSlicerExtension",
    "installedVersion",
    "labelArrayOnVolumeGrid",
    "maskmedCommand",
    "missingDependencies",
    "modelChoices",
    "modelInfo",
    "modelLabel",
    "placeUnderVolumeStudy",
    "pythonExecutable",
    "readVolumeFile",
    "recentModelPaths",
    "rememberModelPath",
    "scenePairs",
    "segmentBlockers",
    "segmentIdForClass",
    "segmentationLabelArray",
    "terminologyTagName",
    "updateSegmentationFromLabelImage",
    "versionAtLeast",
    "volumeArray",
    "volumeToImage",
    "warningsText",
]
