# ruff: noqa: N802, N803, N815, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""MaskMedLogic: one Segment click, from a volume node to segments in a segmentation node.

Flow: the volume is written (exact geometry) to a temporary folder; ``maskmed predict --json --save-result``
runs as a child process (ChildRun); ``poll()`` (a QTimer in the widget, a loop in tests) forwards
progress; when the child succeeds the saved result is loaded into a ThresholdSession, which writes the class
segments; the temporary folder is deleted.

Scene contract: nothing in the scene is touched before the child has succeeded. A new segmentation node is
created and added only then; if writing the segments fails, it is removed again, and an existing node is
restored from a copy taken just before. So a failure or a cancel leaves the scene exactly as it was.

No ScriptedLoadableModuleLogic base class: this must run on the Qt-free slicer-core too; the widget wraps it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import slicer

from .childrun import ChildRun
from .segmentationbackup import SegmentationBackup
from .segmentationwriter import placeUnderVolumeStudy
from .thresholdsession import ThresholdSession
from .volumeio import exportVolumeToFile

if TYPE_CHECKING:
    from maskmed_core.events import Event

# maskmed_core.model.semantic's defaults, repeated because this package must import before maskmed_core is installed
# (Testing/test_slicer_module_static.py checks that they are equal, and equal to the panel's and the .ui's).
DEFAULT_QUERY_THRESHOLD = 0.25
DEFAULT_CLASS_THRESHOLD = 0.5
INPUT_CASE_NAME = "input"

# Overall progress (0..1) covered by each stage the child reports; the rest is export and import.
_STAGE_SPANS = {
    "reading": (0.03, 0.08),
    "preparing": (0.08, 0.12),
    "inference": (0.12, 0.90),
    "finishing": (0.90, 0.93),
    "writing": (0.93, 0.95),
}

# maskmed predict exit codes (maskmed_core.exit_codes.ExitCode names) -> what the user is told first.
_EXIT_EXPLANATIONS = {
    "ERROR": "MaskMed failed unexpectedly",
    "USAGE": "MaskMed was called with invalid options",
    "BAD_INPUT": "This volume cannot be segmented",
    "BAD_MODEL": "The model file cannot be used",
    "CANCELLED": "MaskMed was interrupted",
}


def defaultModelPath() -> str | None:
    """The bundled default model (``maskmed_core/resources/default.maskmed``) if it exists, else None."""
    import importlib.util

    spec = importlib.util.find_spec("maskmed_core")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "default.maskmed"
    return str(path) if path.is_file() else None


def modelLabel(path: str) -> str:
    """Combo box text for a model file: fine-tuned runs all write best.maskmed, so show the run folder too."""
    from maskmed_core.training.run_files import BEST_MODEL, LAST_MODEL

    name = Path(path).name
    return f"{Path(path).parent.name}/{name}" if name in (BEST_MODEL, LAST_MODEL) else name


def formatDuration(seconds: float) -> str:
    """42 s, 3 min 05 s, 1 h 02 min."""
    minutes, seconds = divmod(max(0, int(round(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


@dataclass(frozen=True)
class ModelClass:
    label: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ModelInfo:
    """What a model file holds, for the panel: its classes, voxel spacing (z, y, x mm), patch (z, y, x voxels)."""

    classes: list[ModelClass]
    spacing: tuple[float, ...]
    patchSize: tuple[int, ...]
    mirrorAxes: tuple[int, ...]  # axes (0 = z, 1 = y, 2 = x) the model was trained mirrored along

    def labelsByName(self) -> dict[str, int]:
        return {c.name: c.label for c in self.classes}

    def description(self) -> str:
        """Three lines for the panel: the classes, spacing and patch, and what test-time mirroring does."""
        spacing = " x ".join(f"{value:g}" for value in self.spacing)
        patch = " x ".join(str(value) for value in self.patchSize)
        if self.mirrorAxes:
            axes = ", ".join("zyx"[axis] for axis in self.mirrorAxes)
            mirroring = (f"Trained mirrored along {axes}: test-time mirroring averages "
                         f"{2 ** len(self.mirrorAxes)} passes")
        else:
            mirroring = "Trained without mirroring: test-time mirroring would run one pass"
        return (f"{len(self.classes)} classes: {', '.join(c.name for c in self.classes)}\n"
                f"Voxel spacing {spacing} mm (z, y, x), patch {patch} voxels\n{mirroring}")


def modelInfo(path: str | Path) -> ModelInfo:
    """What the model file at ``path`` holds. Raises maskmed_core.checkpoint.ModelFileError (a ValueError) with a
    clear message for a file that is not a usable model."""
    from maskmed_core.checkpoint import load_model_file

    model = load_model_file(path)
    return ModelInfo(
        [ModelClass(int(c.label), c.name, (int(c.color[0]), int(c.color[1]), int(c.color[2]))) for c in model.classes],
        tuple(float(v) for v in model.plans.spacing),
        tuple(int(v) for v in model.plans.patch_size),
        tuple(int(v) for v in model.mirror_axes),
    )


@dataclass
class SegmentationRunState:
    """One Segment click, from start to commit or failure."""

    volumeNode: Any
    segmentationNode: Any  # the node to update in place, or None for a new one
    queryThreshold: float
    classThreshold: float
    onProgress: Callable[[float, str], None] | None
    onFinished: Callable[[bool, str], None] | None
    largestComponent: bool = False
    start: float = field(default_factory=time.perf_counter)
    resultPath: Path | None = None
    childStart: float | None = None
    inputPath: Path | None = None  # the exported volume: the child names it before each warning
    firstProgress: float | None = None


class MaskMedLogic(ChildRun):
    """Segment a volume with MaskMed and keep the result re-thresholdable.

    Attributes after a run: ``segmentationNode`` (the node written), ``thresholdSession`` (ThresholdSession
    or None), ``lastError`` ("" after success), ``elapsedSeconds`` (start to segments in the node),
    ``timings`` (export, childStartup = interpreter + torch import + model load, child, import, total; s),
    ``classStatistics`` (the child's per-class rows: label, name, voxels, volume_ml, mean_confidence),
    ``messages`` (the child's warning/info texts), ``warnings`` (its warnings about the result, e.g. "the image
    looks mirrored left-right: check its orientation", without the temporary file's name; see ``warningsText``).
    """

    def __init__(self, scene):
        super().__init__()
        self.scene = scene
        self.thresholdSession: ThresholdSession | None = None
        self.segmentationNode = None
        self.lastError = ""
        self.elapsedSeconds = 0.0
        self.timings: dict[str, float] = {}
        self.classStatistics: list[dict] = []
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.queryThreshold = DEFAULT_QUERY_THRESHOLD
        self.classThreshold = DEFAULT_CLASS_THRESHOLD
        self.largestComponent = False
        self._tempDir: Path | None = None
        self._run: SegmentationRunState | None = None

    # ----- Segment -------------------------------------------------------------------------------------
    def startSegmentation(
        self,
        volumeNode,
        modelPath: str | None,
        device: str,
        segmentationNode=None,
        queryThreshold: float = DEFAULT_QUERY_THRESHOLD,
        classThreshold: float = DEFAULT_CLASS_THRESHOLD,
        onProgress: Callable[[float, str], None] | None = None,
        onFinished: Callable[[bool, str], None] | None = None,
        largestComponent: bool = False,
        testTimeAugmentation: bool = False,
    ) -> bool:
        """Start segmenting ``volumeNode``; returns True if the child process started.

        modelPath: a .maskmed file, None for the bundled default. device: one of maskmed_core.devices.DEVICES:
        "auto", "cpu" (also hides every GPU from the child), "cuda" or "mps". segmentationNode: an existing node to
        update in place (its MaskMed segments are replaced, others kept), or None for a new node "<volume> MaskMed"
        (created only on success).
        onProgress(fraction 0..1, text) and onFinished(success, message) are called from poll()/cancel().
        largestComponent: each class keeps only its largest connected piece (``setThresholds`` switches it later).
        testTimeAugmentation: average the network over the mirrors the model was trained with (``maskmed predict
        --tta``: up to 8 passes, so up to 8 times slower; one pass, with a message, for a model trained unmirrored).
        A run that cannot start (no model, a volume that cannot be written) calls onFinished(False, reason)
        at once and returns False. Raises RuntimeError if a run is already going, ValueError for a missing
        or non-scalar volume.
        """
        if self.isRunning():
            raise RuntimeError("a MaskMed segmentation is already running; cancel it first")
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("select a scalar volume to segment")
        from maskmed_core.devices import DEVICES

        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        self.lastError = ""
        self.messages = []
        self.warnings = []
        self.classStatistics = []
        self.timings = {}
        self.elapsedSeconds = 0.0
        run = self._run = SegmentationRunState(
            volumeNode, segmentationNode, float(queryThreshold), float(classThreshold), onProgress, onFinished,
            bool(largestComponent))
        model = modelPath or defaultModelPath()
        if model is None:
            self._fail(
                "No model selected and no default model is installed: choose a .maskmed model file "
                "(made by `maskmed train`)."
            )
            return False
        if not Path(model).is_file():
            self._fail(f"The model file {model} does not exist: choose another model file.")
            return False
        self._report(0.0, "Writing the volume for MaskMed")
        try:
            self._tempDir = Path(tempfile.mkdtemp(prefix="MaskMed-"))
            inputPath = run.inputPath = exportVolumeToFile(
                volumeNode, self._tempDir / "in" / f"{INPUT_CASE_NAME}.nrrd")
        except Exception as error:  # disk full, unwritable temp folder, ...
            self._fail(f"The volume could not be written to a temporary file: {error}")
            return False
        self.timings["export"] = time.perf_counter() - run.start
        run.resultPath = self._tempDir / "out" / f"{INPUT_CASE_NAME}.maskmed-result"
        arguments = [
            "predict", str(inputPath), "-o", str(self._tempDir / "out"), "--model", str(model),
            "--device", device, "--format", "nii.gz", "--save-result", "--json",
            "--query-threshold", repr(float(queryThreshold)), "--class-threshold", repr(float(classThreshold)),
        ] + (["--largest-component"] if largestComponent else []) + (["--tta"] if testTimeAugmentation else [])
        try:
            self.startChild(arguments, device)
        except (OSError, ImportError) as error:  # no interpreter; maskmed_core not installed
            self._fail(f"MaskMed could not be started: {error}")
            return False
        run.childStart = time.perf_counter()
        self._report(0.02, "Starting MaskMed (loading the model)")
        return True

    @property
    def temporaryFolder(self) -> Path | None:
        """The run's temporary folder (input volume, child outputs); None when no run holds one."""
        return self._tempDir

    # poll() (ChildRun) forwards the child's events and, when it has ended, imports the result (onChildExit).

    def onChildExit(self, code: int | None, details: str) -> None:
        run = self._run
        assert run is not None and run.childStart is not None and run.resultPath is not None
        self.timings["child"] = time.perf_counter() - run.childStart
        if code == 0 and run.resultPath.is_file():
            self._commit(run)
        else:
            self._fail(self._describeFailure(code, details))

    def onChildCancelled(self) -> None:
        """cancel(): the child's tree is killed, the temporary files deleted, the scene left as it is;
        onFinished(False, "Cancelled.") is called and lastError becomes "Cancelled."."""
        self._fail("Cancelled.")

    # ----- sliders -------------------------------------------------------------------------------------
    def setThresholds(self, queryThreshold: float, classThreshold: float, largestComponent: bool = False) -> list[str]:
        """Re-threshold the last result (no network), each class reduced to its largest connected piece if
        ``largestComponent``; returns the IDs of the segments that changed."""
        self.queryThreshold, self.classThreshold = float(queryThreshold), float(classThreshold)
        self.largestComponent = bool(largestComponent)
        if self.thresholdSession is None:
            return []
        return self.thresholdSession.update(self.queryThreshold, self.classThreshold, self.largestComponent)

    # ----- internals -----------------------------------------------------------------------------------
    def _report(self, fraction: float, text: str) -> None:
        callback = self._run.onProgress if self._run else None
        if callback is not None:
            callback(max(0.0, min(1.0, fraction)), text)

    def onChildEvent(self, event: Event) -> None:
        from maskmed_core.events import MessageEvent, OutputEvent, ProgressEvent

        run = self._run
        assert run is not None
        if isinstance(event, ProgressEvent):
            if run.firstProgress is None:
                run.firstProgress = time.perf_counter()
            low, high = _STAGE_SPANS.get(event.stage, (0.03, 0.95))
            label = f"MaskMed: {event.stage}" + (f" {event.fraction * 100:.0f}%" if event.stage == "inference" else "")
            self._report(low + (high - low) * event.fraction, label)
        elif isinstance(event, MessageEvent) and event.level != "error":  # errors: ChildRun.childErrors
            self.messages.append(event.text)
            if event.level == "warning":  # "<input file>: <warning>": the file is our temporary copy, not the user's
                self.warnings.append(event.text.removeprefix(f"{run.inputPath}: "))
        elif isinstance(event, OutputEvent):
            self.classStatistics = list(event.classes)

    def _describeFailure(self, code: int | None, details: str) -> str:
        from maskmed_core.exit_codes import ExitCode

        if code == 0:
            explanation = "MaskMed finished but wrote no result"
        elif code in set(ExitCode) and ExitCode(code).name in _EXIT_EXPLANATIONS:
            explanation = _EXIT_EXPLANATIONS[ExitCode(code).name]
        else:
            explanation = f"MaskMed stopped with exit code {code}"
        return f"{explanation}: {details}" if details else f"{explanation}."

    def _commit(self, run: SegmentationRunState) -> None:
        """Load the result and write the segments; on any error undo every scene change."""
        assert run.resultPath is not None
        volumeNode = run.volumeNode
        existing = run.segmentationNode
        importStart = time.perf_counter()
        self._report(0.96, "Importing the segments")
        created = None
        backup = None
        try:
            if existing is None:
                created = slicer.vtkMRMLSegmentationNode()
                created.SetName(f"{volumeNode.GetName()} MaskMed")
                target = created
            else:
                backup = SegmentationBackup.take(existing)  # before any change: refused when incomplete
                target = existing
            session = ThresholdSession(run.resultPath, target, volumeNode)
            # Segments first, then the node into the scene: one round of scene events instead of one per segment.
            session.update(run.queryThreshold, run.classThreshold, run.largestComponent)
            if created is not None:
                self.scene.AddNode(created)
                # Same frame as the volume: the segments are defined on its voxel grid.
                created.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
                created.CreateDefaultDisplayNodes()
            placeUnderVolumeStudy(target, volumeNode)
        except Exception as error:
            if created is not None and created.GetScene() is not None:
                _removeNode(self.scene, created)
            if backup is not None:
                backup.restore()
            self._fail(f"The MaskMed result could not be imported: {error}")
            return
        if self.thresholdSession is not None and self.thresholdSession.segmentationNode is target:
            self.thresholdSession.hideAllQueries()  # previews of the old result would be stale
        self.thresholdSession = session
        self.segmentationNode = target
        self.queryThreshold, self.classThreshold = run.queryThreshold, run.classThreshold
        self.largestComponent = run.largestComponent
        now = time.perf_counter()
        self.timings["import"] = now - importStart
        self.timings["total"] = now - run.start
        if run.firstProgress is not None and run.childStart is not None:
            self.timings["childStartup"] = run.firstProgress - run.childStart
        self.elapsedSeconds = self.timings["total"]
        self._cleanup()
        self._report(1.0, "Done")
        nonEmpty = sum(1 for row in self.classStatistics if row.get("voxels", 0) > 0)
        self._finished(True, f"Segmented {nonEmpty} of {len(session.classes)} classes in {self.elapsedSeconds:.1f} s.")

    def _fail(self, message: str) -> None:
        self.lastError = message
        if self._run is not None:
            self.elapsedSeconds = time.perf_counter() - self._run.start
        self._cleanup()
        self._finished(False, message)

    def _finished(self, success: bool, message: str) -> None:
        callback = self._run.onFinished if self._run else None
        self._run = None
        if callback is not None:
            callback(success, message)

    def _cleanup(self) -> None:
        if self._tempDir is not None:
            shutil.rmtree(self._tempDir, ignore_errors=True)
            self._tempDir = None


def warningsText(warnings: list[str]) -> str:
    """The panel's text for a result's warnings: one paragraph each, "" when there are none."""
    return "\n\n".join(f"Warning: {text[:1].upper()}{text[1:]}" for text in warnings)


def _removeNode(scene, node) -> None:
    """Remove a node and the display/storage nodes it brought along."""
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if not hasattr(node, count):
            continue
        helpers = [getattr(node, getter)(i) for i in range(getattr(node, count)())]
        for helper in helpers:
            if helper is not None and helper.GetScene() is scene:
                scene.RemoveNode(helper)
    scene.RemoveNode(node)
