"""The Slicer module's Logic on real MRML (the Qt-free ``slicer-core`` wheel): end to end on a real CT crop.

Checked against ``maskmed predict`` (the CLI's entry point, on the very file the Logic exported): the segments
written into the segmentation node, saved as .seg.nrrd by Slicer's own storage node and read back with slicerio,
hold the CLI's label map voxel for voxel in physical space, before and after a threshold change. Cancel and
failure leave the scene exactly as it was and no child process behind. Skipped without slicer-core.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

vtk = pytest.importorskip("vtk")
slicer = pytest.importorskip("slicer")
psutil = pytest.importorskip("psutil")

MODULE_DIR = Path(__file__).resolve().parents[1] / "MaskMedSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # as inside Slicer: the module folder is on sys.path

import MaskMedSegmentationLib as Logic  # noqa: E402
from factories import HANG_SECONDS, tiny_model_file  # noqa: E402
from MaskMedSegmentationLib.segmentationwriter import setBinarySegment  # noqa: E402
from MaskMedSegmentationLib.volumeio import orientedImageArray  # noqa: E402

from maskmed_core.events import (  # noqa: E402
    EpochEvent,
    LogEvent,
    MessageEvent,
    ProgressEvent,
    StepEvent,
    SummaryEvent,
)

FIRST = (0.25, 0.5)  # (query, class) thresholds of the run
SECOND = (0.1, 0.3)  # after the slider moves


# ----- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slicer_logic")


@pytest.fixture(scope="module")
def model_path(work) -> Path:
    return tiny_model_file(work / "tiny.maskmed", num_classes=3, patch_size=(32, 48, 48))


@pytest.fixture(scope="module")
def ct_crop_file(demo_data, work) -> Path:
    """64 x 60 x 32 voxels (x, y, z) of the real 3 mm abdomen CT, stored with its LPS-flipped direction."""
    image = sitk.ReadImage(str(demo_data.ct))[30:94, 20:80, 40:72]
    path = work / "ct_crop.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def segmentation_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]


def run_logic(logic, volume, model, timeout=HANG_SECONDS, **kwargs) -> tuple[bool, str, list]:
    finished: list = []
    progress: list = []
    logic.startSegmentation(volume, str(model), "cpu", onProgress=lambda f, t: progress.append((f, t)),
                            onFinished=lambda ok, message: finished.append((ok, message)), **kwargs)
    deadline = time.monotonic() + timeout
    while logic.poll():
        assert time.monotonic() < deadline, "the segmentation did not finish in time"
        time.sleep(0.05)
    assert len(finished) == 1, finished
    return finished[0][0], finished[0][1], progress


def cli_labels(input_file: Path, out: Path, model: Path, thresholds, extra: tuple[str, ...] = ()) -> sitk.Image:
    """``maskmed predict`` (plus ``extra`` options) through its command-line entry point; returns its label map."""
    from maskmed_core.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(["predict", str(input_file), "-o", str(out), "--model", str(model), "--device", "cpu",
                     "--format", "nii.gz", "--json", "--query-threshold", str(thresholds[0]),
                     "--class-threshold", str(thresholds[1]), *extra])
    assert code == 0, stdout.getvalue()
    return sitk.ReadImage(str(out / f"{input_file.name.split('.')[0]}.nii.gz"))


@pytest.fixture(scope="module")
def run(ct_crop_file, model_path, work):
    """One Segment click on a real scene: the volume loaded by Slicer's storage node, a new segmentation node."""
    scene = slicer.vtkMRMLScene()
    volume = Logic.readVolumeFile(ct_crop_file, scene, name="ct")
    before = node_count(scene)
    logic = Logic.MaskMedLogic(scene)
    ok, message, progress = run_logic(logic, volume, model_path, queryThreshold=FIRST[0], classThreshold=FIRST[1])
    assert ok, message
    # The CLI's answers on the same exported file (the Logic writes its input with exportVolumeToFile too).
    exported = Logic.exportVolumeToFile(volume, work / "cli" / "ct.nrrd")
    first = cli_labels(exported, work / "cli" / "first", model_path, FIRST)
    second = cli_labels(exported, work / "cli" / "second", model_path, SECOND)
    return {"scene": scene, "volume": volume, "logic": logic, "before": before, "progress": progress,
            "message": message, "cli_first": first, "cli_second": second, "exported": exported}


def seg_nrrd_labels(segmentation_node, path: Path) -> sitk.Image:
    """Write the node with Slicer's storage node, read it with slicerio; class label map as a SimpleITK image."""
    import slicerio

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation_node)
    segmentation = slicerio.read_segmentation(str(path))
    voxels = segmentation["voxels"]
    assert voxels.ndim == 3, "the MaskMed segments must share one layer"
    labels = np.zeros(voxels.shape, dtype=np.uint8)
    for segment in segmentation["segments"]:
        if segment["id"].startswith(Logic.SEGMENT_ID_PREFIX):
            labels[voxels == segment["labelValue"]] = int(segment["id"][len(Logic.SEGMENT_ID_PREFIX):])
    offset = np.asarray(segmentation.get("referenceImageExtentOffset", [0, 0, 0]), dtype=float)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))  # (i, j, k) -> [k, j, i]
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin((ijk_to_lps[:3, 3] + ijk_to_lps[:3, :3] @ offset).tolist())
    return image


def assert_same_labels_in_physical_space(image: sitk.Image, reference: sitk.Image) -> None:
    """Every voxel of ``reference`` has the label of the ``image`` voxel at the same physical point.

    The voxel centres must coincide (an integer index mapping), so nearest-neighbour resampling is exact.
    """
    for index in ((0, 0, 0), tuple(s - 1 for s in reference.GetSize())):
        point = reference.TransformIndexToPhysicalPoint(index)
        continuous = image.TransformPhysicalPointToContinuousIndex(point)
        assert np.allclose(continuous, np.round(continuous), atol=1e-3), "voxel centres do not coincide"
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    a, b = sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(reference)
    assert not (a == 255).any(), "the .seg.nrrd does not cover the whole volume (cropped?)"
    assert np.array_equal(a, b), f"{int((a != b).sum())} voxels differ"


def layer_labels(segmentation_node, classes) -> np.ndarray:
    """[k, j, i] class labels from the node's MaskMed layer (straight from memory)."""
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    layer = segmentation.GetSegment(Logic.segmentIdForClass(classes[0].label)).GetRepresentation(name)
    values = orientedImageArray(layer)
    labels = np.zeros(values.shape, dtype=np.uint8)
    for c in classes:
        segment = segmentation.GetSegment(Logic.segmentIdForClass(c.label))
        assert segment.GetRepresentation(name) is layer
        labels[values == segment.GetLabelValue()] = c.label
    return labels


# ----- the run --------------------------------------------------------------------------------------------------
def test_one_segment_per_class_with_name_colour_terminology_and_geometry(run):
    scene, volume, logic = run["scene"], run["volume"], run["logic"]
    node = logic.segmentationNode
    assert node.GetScene() is scene and node.GetName() == "ct MaskMed"
    assert segmentation_nodes(scene) == [node]
    assert node_count(scene) == run["before"] + 2  # the segmentation node and its display node
    classes = logic.thresholdSession.classes
    segmentation = node.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == [f"MaskMed_{c.label}" for c in classes]
    for c in classes:
        segment = segmentation.GetSegment(f"MaskMed_{c.label}")
        assert segment.GetName() == c.name
        assert np.allclose(segment.GetColor(), [v / 255 for v in c.color])
        tag = vtk.reference("")
        assert segment.GetTag(Logic.terminologyTagName(segment), tag) and str(tag) == c.terminology.slicer_tag()
    # reference geometry = the volume's grid (IJKToRAS and extent)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(ijk_to_ras, volume.GetImageData())
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentation.GetConversionParameter(name) == expected
    # progress went from 0 to 1 without going back, and the result was reported
    fractions = [f for f, _ in run["progress"]]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert logic.lastError == "" and logic.elapsedSeconds > 0 and "classes" in run["message"]


def test_seg_nrrd_equals_the_cli_label_map_in_physical_space(run, work):
    image = seg_nrrd_labels(run["logic"].segmentationNode, work / "first.seg.nrrd")
    assert np.asarray(sitk.GetArrayViewFromImage(run["cli_first"])).any(), "the CLI found nothing: a useless check"
    assert_same_labels_in_physical_space(image, run["cli_first"])


def test_threshold_change_updates_segments_in_place_and_equals_a_fresh_predict(run, work):
    logic = run["logic"]
    node = logic.segmentationNode
    classes = logic.thresholdSession.classes
    segmentation = node.GetSegmentation()
    ids_before = list(segmentation.GetSegmentIDs())
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    layer_before = segmentation.GetSegment(ids_before[0]).GetRepresentation(name)
    count_before = node_count(run["scene"])

    changed = logic.setThresholds(*SECOND)
    assert changed, "the new thresholds changed nothing: pick thresholds that do"
    assert set(changed) <= set(ids_before)
    assert list(segmentation.GetSegmentIDs()) == ids_before  # same IDs, same order, no duplicates
    assert segmentation.GetSegment(ids_before[0]).GetRepresentation(name) is layer_before  # written in place
    assert node_count(run["scene"]) == count_before
    assert logic.setThresholds(*SECOND) == []  # nothing changes twice

    expected = sitk.GetArrayFromImage(run["cli_second"])
    assert Logic.volumeio.imageMatchesVolumeGrid(run["cli_second"], run["volume"])
    assert np.array_equal(layer_labels(node, classes), expected)
    assert_same_labels_in_physical_space(seg_nrrd_labels(node, work / "second.seg.nrrd"), run["cli_second"])
    # only the classes whose voxels differ between the two label maps were rewritten
    first = sitk.GetArrayFromImage(run["cli_first"])
    differing = {f"MaskMed_{c.label}" for c in classes if not np.array_equal(first == c.label, expected == c.label)}
    assert set(changed) == differing

    assert set(logic.setThresholds(*FIRST)) == differing  # and back
    assert np.array_equal(layer_labels(node, classes), first)


def test_largest_component_switch_equals_maskmed_core_and_switches_back(run):
    logic = run["logic"]
    session, node = logic.thresholdSession, logic.segmentationNode
    classes = session.classes

    def labels(thresholds, largest):
        return sitk.GetArrayFromImage(session.result.label_map(*thresholds, largest_component=largest))

    # The tiny untrained model's classes are ragged at some thresholds: take the first where the switch matters.
    candidates = [FIRST, SECOND, (0.25, 0.4), (0.25, 0.6), (0.25, 0.7), (0.1, 0.5), (0.5, 0.5)]
    thresholds = next((t for t in candidates if not np.array_equal(labels(t, False), labels(t, True))), None)
    assert thresholds is not None, "no class has a second piece at any of these thresholds: a useless check"
    plain, expected = labels(thresholds, False), labels(thresholds, True)
    differing = {f"MaskMed_{c.label}" for c in classes if not np.array_equal(plain == c.label, expected == c.label)}

    logic.setThresholds(*thresholds)
    assert set(logic.setThresholds(*thresholds, True)) == differing
    assert logic.largestComponent and np.array_equal(layer_labels(node, classes), expected)
    voxel_ml = float(np.prod(run["cli_first"].GetSpacing())) / 1000
    for row in session.classTable(*thresholds, True):  # the tables follow the switch (the fast path)
        assert row["volumeMl"] == pytest.approx((expected == row["label"]).sum() * voxel_ml)
    assert set(logic.setThresholds(*thresholds)) == differing  # and back
    assert np.array_equal(layer_labels(node, classes), plain)
    logic.setThresholds(*FIRST)  # as the other tests expect


def test_class_table_and_query_table(run):
    session = run["logic"].thresholdSession
    table = session.classTable(*FIRST)
    assert [row["name"] for row in table] == [c.name for c in session.classes]
    voxel_ml = float(np.prod(run["cli_first"].GetSpacing())) / 1000
    first = sitk.GetArrayFromImage(run["cli_first"])
    for row in table:
        assert row["volumeMl"] == pytest.approx((first == row["label"]).sum() * voxel_ml)
        assert row["meanConfidence"] >= 0 and len(row["color"]) == 3
    core = session.result.statistics(*FIRST)  # the fast path (thresholds shown) equals maskmed_core's
    assert [(s.voxels, s.mean_confidence) for s in core] == [
        (round(r["volumeMl"] / voxel_ml), pytest.approx(r["meanConfidence"])) for r in table]
    queries = session.queryTable(FIRST[0])
    assert len(queries) == session.result.masks.shape[0]
    confidences = [q["confidence"] for q in queries]
    assert confidences == sorted(confidences, reverse=True)
    assert all(q["kept"] == (q["confidence"] >= FIRST[0]) for q in queries)
    assert {q["className"] for q in queries} <= {c.name for c in session.classes}
    # the panel's rows: the same numbers as text
    rows = session.classRows(*FIRST)
    assert [(r.key, r.texts[0], r.color) for r in rows] == [(t["label"], t["name"], tuple(t["color"])) for t in table]
    for row, entry in zip(rows, table, strict=True):
        assert row.texts[1] == f"{entry['volumeMl']:.1f}"
        assert row.texts[2] == (f"{entry['meanConfidence']:.2f}" if entry["volumeMl"] > 0 else "-")
    assert [r.texts for r in session.queryRows(FIRST[0])] == [
        (str(q["index"]), q["className"], f"{q['confidence']:.2f}", "yes" if q["kept"] else "no") for q in queries]


def test_show_query_adds_one_segment_and_hide_query_removes_it(run):
    logic = run["logic"]
    session, node = logic.thresholdSession, logic.segmentationNode
    segmentation = node.GetSegmentation()
    ids_before = list(segmentation.GetSegmentIDs())
    top = session.queryTable(0.0)[0]
    segment_id = session.showQuery(top["index"])
    assert list(segmentation.GetSegmentIDs()) == [*ids_before, segment_id]
    segment = segmentation.GetSegment(segment_id)
    assert segment.GetName() == f"query {top['index']}: {top['className']}"
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    shown = orientedImageArray(segment.GetRepresentation(name)) == segment.GetLabelValue()
    expected = sitk.GetArrayFromImage(session.queryMaskImage(top["index"])).astype(bool)
    assert np.array_equal(shown, expected)
    # its own layer: the class segments' voxels are untouched
    assert segment.GetRepresentation(name) is not segmentation.GetSegment(ids_before[0]).GetRepresentation(name)
    session.showQuery(top["index"])  # showing twice keeps one segment
    assert len(segmentation.GetSegmentIDs()) == len(ids_before) + 1
    session.hideQuery(top["index"])
    assert list(segmentation.GetSegmentIDs()) == ids_before


# ----- cancel and failure leave the scene as it was -------------------------------------------------------------
def scene_snapshot(scene) -> tuple:
    nodes = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        state = [node.GetID(), node.GetName()]
        if node.IsA("vtkMRMLSegmentationNode"):
            state.append(node.GetNodeReferenceID(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()))
            segmentation = node.GetSegmentation()
            name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
            for segment_id in segmentation.GetSegmentIDs():
                segment = segmentation.GetSegment(segment_id)
                image = segment.GetRepresentation(name)
                state.append((segment_id, segment.GetName(), orientedImageArray(image).tobytes()))
        nodes.append(tuple(state))
    return tuple(nodes)


def alive(processes) -> list:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_cancel_right_after_the_first_progress_event_leaves_nothing(run, model_path):
    scene, volume = run["scene"], run["volume"]
    existing = run["logic"].segmentationNode
    snapshot = scene_snapshot(scene)
    for target in (None, existing):  # a new node would be created; an existing one must stay untouched
        logic = Logic.MaskMedLogic(scene)
        finished = []
        first_progress = []
        logic.startSegmentation(volume, str(model_path), "cpu", segmentationNode=target,
                                onProgress=lambda f, t, seen=first_progress: seen.append(t) if ":" in t else None,
                                onFinished=lambda ok, message, done=finished: done.append((ok, message)))
        temporary = logic.temporaryFolder
        assert temporary is not None and temporary.is_dir()
        deadline = time.monotonic() + 120
        while not first_progress:
            assert logic.poll(), f"the run ended before its first progress event: {logic.lastError}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        children = psutil.Process().children(recursive=True)
        assert children, "no child process was running"
        logic.cancel()
        assert not alive(children), "a child process survived the cancel"
        assert finished == [(False, "Cancelled.")] and logic.lastError == "Cancelled."
        assert not logic.isRunning() and not logic.poll()
        assert not temporary.exists(), "the temporary folder was left behind"
        assert scene_snapshot(scene) == snapshot


class _ImportThatFailsHalfway:
    """A ThresholdSession whose import does what the real one does first (the node's reference geometry switched to
    the segmented volume, a segment written), then runs out of memory."""

    def __init__(self, result_path, target, volume):
        target.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        setBinarySegment(target, "MaskMed_1", np.ones((4, 4, 4), np.uint8), volume, "liver", (1, 0, 0))
        raise MemoryError("Unable to allocate 600 MiB for the class layer")


def _scene_with_a_user_segment():
    """A scene with volumes A (16^3) and B (4^3) and a segmentation of A holding the user's 'tumour'."""
    scene = slicer.vtkMRMLScene()
    volumes = []
    for name, size in (("A", 16), ("B", 4)):
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        image = vtk.vtkImageData()
        image.SetDimensions(size, size, size)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        volume.SetAndObserveImageData(image)
        volumes.append(volume)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation of A")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumes[0])
    tumour = np.zeros((16, 16, 16), np.uint8)
    tumour[2:6, 2:6, 2:6] = 1
    setBinarySegment(node, "tumour", tumour, volumes[0], "tumour", (1, 0, 0))
    return scene, volumes, node


def _commit_into(scene, volume, node, tmp_path) -> list:
    """The Logic's commit of a (never read) result into ``node``, as when the child has written it."""
    logic = Logic.MaskMedLogic(scene)
    finished: list = []
    run = Logic.maskmedlogic.SegmentationRunState(volume, node, *FIRST, None,
                                                  lambda ok, message: finished.append((ok, message, logic.lastError)))
    run.resultPath = tmp_path / "result.maskmed-result"
    logic._run = run
    logic._commit(run)
    return finished


def test_an_import_failing_halfway_into_an_existing_node_undoes_all_it_changed(monkeypatch, tmp_path):
    """The user's segment, the node's reference geometry volume (the segmented volume's, halfway) and every segment
    come back; on slicer-core too, whose vtkSegmentation could not copy itself before the conversion rules were
    registered (the backup was empty, and restoring it deleted the user's segment)."""
    scene, volumes, node = _scene_with_a_user_segment()
    snapshot = scene_snapshot(scene)
    monkeypatch.setattr(Logic.maskmedlogic, "ThresholdSession", _ImportThatFailsHalfway)
    [(ok, message, error)] = _commit_into(scene, volumes[1], node, tmp_path)
    assert not ok and message == error and "could not be imported" in message and "600 MiB" in message
    assert scene_snapshot(scene) == snapshot
    assert list(node.GetSegmentation().GetSegmentIDs()) == ["tumour"]


def test_an_import_whose_backup_would_be_incomplete_does_not_start(monkeypatch, tmp_path):
    class CopiesNothing(slicer.vtkSegmentation):
        def DeepCopy(self, source):  # noqa: N802 (VTK's name)
            pass

    scene, volumes, node = _scene_with_a_user_segment()
    snapshot = scene_snapshot(scene)
    monkeypatch.setattr(Logic.maskmedlogic, "ThresholdSession", _ImportThatFailsHalfway)
    monkeypatch.setattr(slicer, "vtkSegmentation", CopiesNothing)
    [(ok, message, _)] = _commit_into(scene, volumes[1], node, tmp_path)
    assert not ok and "could not be copied aside (copied 0 of 1)" in message and "nothing was changed" in message
    assert scene_snapshot(scene) == snapshot


def test_failing_run_leaves_the_scene_unchanged_and_says_why(run, work):
    scene, volume = run["scene"], run["volume"]
    existing = run["logic"].segmentationNode
    broken = work / "broken.maskmed"
    broken.write_bytes(b"\x00not a safetensors file" * 100)
    snapshot = scene_snapshot(scene)
    logic = Logic.MaskMedLogic(scene)
    ok, message, _ = run_logic(logic, volume, broken, segmentationNode=existing)
    assert not ok and message == logic.lastError
    assert "model file cannot be used" in logic.lastError and "broken.maskmed" in logic.lastError
    assert scene_snapshot(scene) == snapshot
    assert logic.thresholdSession is None and logic.setThresholds(0.5, 0.5) == []

    ok, message, _ = run_logic(logic, volume, work / "no_such.maskmed")  # fails before starting anything
    assert not ok and "does not exist" in message
    assert scene_snapshot(scene) == snapshot
    with pytest.raises(ValueError):
        logic.startSegmentation(None, None, "cpu")


@pytest.mark.demo_data
@pytest.mark.slow
def test_a_mirrored_ct_reaches_the_panel_as_a_warning(work):
    """The default model on the bundled held-out CT with its voxels flipped along x (header kept): the child's
    warning reaches ``logic.warnings`` without the temporary file's name, and ``warningsText`` is the panel's text."""
    from maskmed_core.bundled import DEFAULT_MODEL
    from maskmed_core.demo_command import HELD_OUT_CT

    image = sitk.ReadImage(str(HELD_OUT_CT))
    mirrored = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
    mirrored.CopyInformation(image)
    path = work / "mirrored.nrrd"
    sitk.WriteImage(mirrored, str(path))
    scene = slicer.vtkMRMLScene()
    logic = Logic.MaskMedLogic(scene)
    ok, message, _ = run_logic(logic, Logic.readVolumeFile(path, scene, name="mirrored"), DEFAULT_MODEL)
    assert ok, message
    assert len(logic.warnings) == 1, logic.warnings
    assert logic.warnings[0].startswith("the image looks mirrored left-right: check its orientation")
    assert Logic.warningsText(logic.warnings).startswith("Warning: The image looks mirrored left-right")
    assert Logic.warningsText([]) == ""


# ----- pieces ---------------------------------------------------------------------------------------------------
def test_volume_export_keeps_exact_geometry_also_oblique(tmp_path):
    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(7, 6, 5)).astype(np.int16))  # x 5, y 6, z 7
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection((rotation @ np.diag([1, -1, -1])).ravel().tolist())
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((12.5, -40.25, 101.0))
    volume = Logic.imageToVolumeNode(image, scene, "oblique")
    assert np.array_equal(Logic.volumeArray(volume), sitk.GetArrayViewFromImage(image))  # [k, j, i]
    for suffix in ("nrrd", "nii.gz"):
        written = sitk.ReadImage(str(Logic.exportVolumeToFile(volume, tmp_path / f"v.{suffix}")))
        assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
        assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
        assert np.allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)
        assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    assert node_count(scene) == 1  # exporting adds no storage node to the scene
    # a label image on another axis order is resampled onto the volume's grid
    labels = sitk.Cast(image > 0, sitk.sitkUInt8)
    flipped = sitk.Flip(labels, [True, False, True])
    assert np.array_equal(Logic.labelArrayOnVolumeGrid(flipped, volume), sitk.GetArrayViewFromImage(labels))


def test_writer_reuses_segments_and_never_touches_other_segments(run):
    """Re-runs update in place; a user segment that shares the MaskMed layer keeps its voxels."""
    volume, classes = run["volume"], run["logic"].thresholdSession.classes
    node = slicer.vtkMRMLSegmentationNode()  # not in the scene: the writer needs none
    first, second = run["cli_first"], run["cli_second"]
    ids = [f"MaskMed_{c.label}" for c in classes]
    assert Logic.updateSegmentationFromLabelImage(node, first, classes, volume) == ids
    segmentation = node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    layer = segmentation.GetSegment("MaskMed_1").GetRepresentation(name)
    user = slicer.vtkSegment()  # as the Segment Editor does: a new segment in the existing layer
    user.SetName("tumor")
    user.SetLabelValue(200)
    user.AddRepresentation(name, layer)
    segmentation.AddSegment(user, "tumor")
    orientedImageArray(layer)[1:3, 1:3, 1:3] = 200
    events = []
    segmentation.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified, lambda *_: events.append(1))
    Logic.updateSegmentationFromLabelImage(node, second, classes, volume, onlyClasses={1})
    assert list(segmentation.GetSegmentIDs()) == [*(f"MaskMed_{c.label}" for c in classes), "tumor"]
    assert segmentation.GetSegment("tumor").GetRepresentation(name) is layer  # left where it was ...
    assert (orientedImageArray(layer) == 200).sum() == 8  # ... with its voxels
    assert segmentation.GetSegment("MaskMed_1").GetRepresentation(name) is not layer  # ours moved out
    assert np.array_equal(layer_labels(node, classes), sitk.GetArrayFromImage(second))  # rebuilt: all classes
    assert events, "Slicer was not told that the labelmap changed"
    moved = segmentation.GetSegment("MaskMed_1").GetRepresentation(name)
    events.clear()
    orientedImageArray(moved)[0, 0, 0] = 1  # a hand edit
    moved.Modified()
    assert events, "the segmentation no longer observes the moved layer"
    before = layer_labels(node, classes)
    assert Logic.updateSegmentationFromLabelImage(node, first, classes, volume, onlyClasses={1, 2}) == [
        "MaskMed_1", "MaskMed_2"]
    assert segmentation.GetSegment("MaskMed_1").GetRepresentation(name) is moved  # reused in place
    new = sitk.GetArrayFromImage(first)
    touched = np.isin(before, [1, 2]) | np.isin(new, [1, 2])  # only classes 1 and 2 were rewritten
    expected = before.copy()
    expected[touched] = np.where(np.isin(new, [1, 2]), new, 0)[touched]
    assert np.array_equal(layer_labels(node, classes), expected)


def test_input_grid_map_equals_maskmed_core_resampling_on_a_permuted_flipped_grid():
    from MaskMedSegmentationLib.thresholdsession import InputGridMap

    from maskmed_core.classes import AMOS15_CLASSES
    from maskmed_core.inference.result import Grid, SegmentationResult

    model = Grid((23, 19, 17), (3.0, 3.0, 3.0), (-30.0, -20.0, -10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    # input axes: i along -z, j along x, k along -y; 0.8 / 1.3 / 2.2 mm, origin off the model voxel centres
    direction = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float)
    target = Grid((30, 80, 35), (2.2, 0.8, 1.3), (-31.0, 40.3, 38.0), tuple(direction.ravel()))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(17, 19, 23)).astype(np.uint8)
    result = SegmentationResult(
        masks=np.zeros((1, 17, 19, 23), np.uint8), class_given_object=np.ones((1, 3), np.float32),
        objectness=np.ones(1, np.float32), classes=list(AMOS15_CLASSES[:3]), model_grid=model,
        canonical_grid=model, input_grid=target,
    )
    expected = sitk.GetArrayFromImage(result.to_input_grid(labels))
    grid_map = InputGridMap(model, target)
    assert np.array_equal(grid_map.gather(labels), expected)
    mask = np.zeros(labels.shape, bool)
    mask[5:9, 10:12, 10:20] = True
    box = grid_map.inputBox(mask)
    assert np.array_equal(grid_map.gather(labels, box), expected[box])
    touched = grid_map.gather(mask.view(np.uint8)).view(bool)
    assert touched.any() and not touched[~_box_mask(box, expected.shape)].any()
    assert grid_map.multiplicity().sum() == grid_map.gather(np.ones_like(labels)).sum()


def _box_mask(box, shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box] = True
    return mask


def test_background_process_events_and_cancel_of_a_whole_tree():
    script = (
        "import json, subprocess, sys, time\n"
        "print(json.dumps({'event': 'progress', 'case': 'ct', 'stage': 'reading', 'fraction': 0.5}), flush=True)\n"
        "print(json.dumps({'event': 'progress', 'fraction': 0.5}), flush=True)\n"
        "print('plain text', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    events = []
    process = Logic.BackgroundProcess([sys.executable, "-c", script], env={"X_TEST": "1"}, onEvent=events.append)
    process.start()
    deadline = time.monotonic() + HANG_SECONDS
    while len(events) < 4 or len(psutil.Process(process.pid).children()) < 1:
        assert process.poll() and time.monotonic() < deadline
        time.sleep(0.02)
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    process.cancel()
    assert not alive(tree)
    assert ProgressEvent("ct", "reading", 0.5) in events  # a line of the event schema: its typed event
    assert LogEvent('{"event": "progress", "fraction": 0.5}') in events  # not of the schema: a log line
    assert LogEvent("plain text") in events and LogEvent("to stderr", "stderr") in events
    assert "to stderr" in process.stderrText()
    assert process.returncode is not None and process.returncode != 0 and not process.poll()

    done = Logic.BackgroundProcess([sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                                   env=Logic.childEnvironment("cpu"), onEvent=events.append)
    done.start()
    assert done.wait(timeout=HANG_SECONDS) == 0 and events[-1] == LogEvent("-1")
    command = Logic.maskmedCommand("predict", "x")
    assert command[1:] == ["-m", "maskmed_core.cli", "predict", "x"] and Path(command[0]).is_file()


def test_missing_dependency_is_reported_clearly(monkeypatch):
    assert Logic.missingDependencies() == []  # this environment has everything
    real_version = importlib.metadata.version

    def version(name):
        if name in ("monai", "torch"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    missing = Logic.missingDependencies()
    assert [(m.name, m.found) for m in missing] == [("torch", None), ("monai", None)]
    text = Logic.describeMissing(missing)
    assert "monai >= 1.4 (not installed)" in text and "torch >= 2.1 (not installed)" in text
    assert "Install" in text and "PyTorch extension" in text
    plan = Logic.installPlan(missing)
    assert [(s.kind, s.requirement) for s in plan] == [
        (Logic.StepKind.TORCH, "torch>=2.1"), (Logic.StepKind.PIP, "monai>=1.4"), (Logic.StepKind.BUILD_OPS, "")]
    pip_arguments = plan[1].arguments
    assert pip_arguments[0] == "monai>=1.4" and f"numpy=={real_version('numpy')}" in pip_arguments
    assert not any(a.startswith(("SimpleITK>", "vtk>", "numpy>")) for a in pip_arguments)
    assert plan[2].arguments[-3:] == ["-m", "maskmed_core.cli", "build-ops"] and plan[2].optional

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.9" if name == "scipy" else real_version(name))
    (old,) = Logic.missingDependencies()
    assert (old.name, old.found) == ("scipy", "0.9") and "version 0.9 is installed" in Logic.describeMissing([old])


def test_logic_package_imports_without_torch_and_maskmed_core():
    """Inside Slicer the panel imports before the dependencies are installed."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['maskmed_core'] = None\n"
        f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        "import MaskMedSegmentationLib as Logic\n"
        "print([m.name for m in Logic.missingDependencies()])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().replace("'", '"')) == []  # metadata says installed; import not needed


# ----- fine-tuning ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(run, work):
    """The segmented crop, plus hand-made segments in their own layers: "Spleen" (the model's class) and "Left
    iliopsoas" (a new class, with a colour and a terminology of its own), exported as nnU-Net data."""
    from maskmed_core.classes import LEFT, CodedTerm, Terminology

    scene, volume = run["scene"], run["volume"]
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName("manual")
    scene.AddNode(node)
    mask = np.zeros(Logic.volumeio.volumeShapeKji(volume), dtype=np.uint8)
    mask[8:20, 10:40, 12:44] = 1
    Logic.segmentationwriter.setBinarySegment(node, "s1", mask, volume, "Spleen", (1, 0, 0))
    Logic.segmentationwriter.setBinarySegment(node, "s2", mask[:, ::-1], volume, "Left iliopsoas", (0, 1, 0))
    terminology = Terminology(CodedTerm("SCT", "123037004", "Anatomical Structure"),
                              CodedTerm("SCT", "68455001", "Iliopsoas muscle"), CodedTerm(*LEFT))
    segment = node.GetSegmentation().GetSegment("s2")
    segment.SetTag(Logic.segmentationwriter.terminologyTagName(segment), terminology.slicer_tag())
    session = Logic.FineTuneSession()
    classes = run["logic"].thresholdSession.classes
    folder = session.exportScenePairs([(volume, run["logic"].segmentationNode), (volume, node)],
                                      work / "Dataset001_Scene", {c.name: c.label for c in classes})
    return {"folder": folder, "session": session, "mask": mask, "classes": classes, "terminology": terminology}


def test_export_scene_pairs_writes_a_dataset_maskmed_accepts(dataset, run):
    from maskmed_core.training.checks import check_dataset
    from maskmed_core.training.dataset import load_dataset

    spec = load_dataset(dataset["folder"])
    assert [c.name for c in spec.cases] == ["ct", "ct_2"]
    new_label = max(c.label for c in dataset["classes"]) + 1
    assert spec.labels == {**{c.name: c.label for c in dataset["classes"]}, "Left iliopsoas": new_label}
    assert dataset["session"].newClasses == ["Left iliopsoas"]
    (new,) = spec.class_details.values()  # the painted segment's colour and terminology travel with the dataset
    assert (new.name, new.label, new.color, new.terminology) == ("Left iliopsoas", new_label, (0, 255, 0),
                                                                dataset["terminology"])
    assert check_dataset(spec) == []
    first = sitk.ReadImage(str(spec.cases[0].label))
    assert np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(run["cli_first"]))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(spec.cases[1].label)))
    # "Spleen" matched "spleen" (label 1); the new class is painted where the mirrored mask lies
    assert np.array_equal(second, np.where(dataset["mask"][:, ::-1] > 0, new_label, dataset["mask"]))
    image = sitk.ReadImage(str(spec.cases[0].image))
    assert np.array_equal(sitk.GetArrayFromImage(image), Logic.volumeArray(run["volume"]))


@pytest.mark.slow
def test_fine_tune_one_step_yields_a_model(dataset, model_path, work):
    session = Logic.FineTuneSession()
    events = []
    session.start(dataset["folder"], work / "finetune", model_path, 1, "cpu", onEvent=events.append,
                  extraArgs=["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1", "--workers", "0",
                             "--val-every", "1"])
    code = session.wait(timeout=300)
    assert code == 0, session.lastError
    assert session.resultModelPath is not None and Path(session.resultModelPath).is_file()
    assert len(session.lossHistory) == 1 and np.isfinite(session.lossHistory[0])
    # maskmed train's JSON lines arrive as the typed events of maskmed_core.events
    assert [e for e in events if isinstance(e, EpochEvent)][0].loss == session.lossHistory[0]
    assert isinstance(session.summary, SummaryEvent) and session.summary in events
    assert session.resultModelPath == session.summary.best_model
    info = Logic.modelInfo(session.resultModelPath)
    assert [c.name for c in info.classes] == [c.name for c in dataset["classes"]] + ["Left iliopsoas"]
    assert info.classes[-1].color == (0, 255, 0)
    assert info.patchSize == (32, 48, 48)
    assert not os.environ.get("CUDA_VISIBLE_DEVICES")  # the child's setting did not leak into this process


def test_a_stopped_fine_tune_keeps_its_best_model_so_far(tmp_path):
    session = Logic.FineTuneSession()
    session.outputFolder = tmp_path
    session.onChildCancelled()  # stopped before the first epoch's end: nothing to keep
    assert session.resultModelPath is None and "no model was written" in session.lastError
    (tmp_path / "last.maskmed").write_bytes(b"epoch 1")
    session.onChildCancelled()
    assert session.resultModelPath == str(tmp_path / "last.maskmed") and session.lastError == "Stopped."
    (tmp_path / "best.maskmed").write_bytes(b"validated")
    session.onChildCancelled()
    assert session.resultModelPath == str(tmp_path / "best.maskmed")


def test_the_panel_offers_the_bundled_default_model_with_its_fifteen_classes():
    path = Logic.defaultModelPath()
    assert path is not None and Path(path).name == "default.maskmed"
    info = Logic.modelInfo(path)
    assert len(info.classes) == 15 and info.classes[5].name == "liver"
    assert info.spacing == (3.0, 3.0, 3.0)
    assert info.description().startswith("15 classes: spleen, right kidney,")
    assert info.description().endswith("Voxel spacing 3 x 3 x 3 mm (z, y, x), patch 64 x 96 x 96 voxels\n"
                                       "Trained without mirroring: test-time mirroring would run one pass")


def test_test_time_augmentation_equals_the_cli_tta_label_map(run, model_path, work):
    """The panel's "Average over mirrored copies" reaches ``maskmed predict --tta``: the segments equal its label
    map, which differs from the one-pass label map (the tiny model was trained mirrored along z, y and x)."""
    info = Logic.modelInfo(model_path)
    assert info.mirrorAxes == (0, 1, 2)
    assert info.description().endswith("Trained mirrored along z, y, x: test-time mirroring averages 8 passes")
    scene = slicer.vtkMRMLScene()
    volume = Logic.readVolumeFile(run["exported"], scene, name="ct")
    logic = Logic.MaskMedLogic(scene)
    ok, message, _ = run_logic(logic, volume, model_path, queryThreshold=FIRST[0], classThreshold=FIRST[1],
                               testTimeAugmentation=True)
    assert ok, message
    expected = sitk.GetArrayFromImage(cli_labels(run["exported"], work / "cli" / "tta", model_path, FIRST, ("--tta",)))
    assert not np.array_equal(expected, sitk.GetArrayFromImage(run["cli_first"])), "TTA changed nothing: useless"
    assert np.array_equal(layer_labels(logic.segmentationNode, logic.thresholdSession.classes), expected)


def test_scene_pairs_and_fine_tune_preparation(run, model_path, work):
    scene, volume, logic = run["scene"], run["volume"], run["logic"]
    assert (volume, logic.segmentationNode) in Logic.scenePairs(scene)
    session = Logic.FineTuneSession()
    run_folder, dataset = session.prepareDataset(scene, work / "runs", model_path, now=0)
    assert run_folder.parent == work / "runs" and run_folder.name.startswith("maskmed-finetune-19")
    assert dataset == run_folder / "dataset" and (dataset / "dataset.json").is_file()
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    model_labels = {"background": 0, **Logic.modelInfo(model_path).labelsByName()}
    # Segments the model has no class for (the dataset fixture's painted "Left iliopsoas", when it ran) are new classes
    assert {k: v for k, v in labels.items() if k in model_labels} == model_labels
    assert sorted(set(labels) - set(model_labels)) == sorted(session.newClasses)

    folder = work / "nnunet"
    folder.mkdir()
    with pytest.raises(ValueError, match="no dataset.json"):
        session.prepareDataset(scene, work / "runs", model_path, datasetFolder=folder)
    (folder / "dataset.json").write_text("{}")
    assert session.prepareDataset(scene, work / "runs2", model_path, datasetFolder=folder)[1] == folder
    with pytest.raises(ValueError, match="No segmentation in the scene"):
        session.prepareDataset(slicer.vtkMRMLScene(), work / "runs3", model_path)
    assert not (work / "runs3").exists()


def test_a_fine_tune_export_failing_halfway_leaves_no_folder(run, model_path, work, monkeypatch):
    """A bad model, or a case that cannot be written (a full disk), leaves neither a run folder nor a dataset
    without its dataset.json behind (they once stayed: images of the first case, no dataset.json)."""
    scene, volume, logic = run["scene"], run["volume"], run["logic"]
    session = Logic.FineTuneSession()
    with pytest.raises(Exception, match="no_such.maskmed"):
        session.prepareDataset(scene, work / "runs_bad_model", work / "no_such.maskmed", now=0)
    assert not (work / "runs_bad_model").exists()

    written: list = []
    real_export = Logic.finetunesession.exportVolumeToFile
    full_after = {"cases": 0}

    def disk_full(volume_node, path):
        if len(written) >= full_after["cases"]:
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        return real_export(volume_node, path)

    monkeypatch.setattr(Logic.finetunesession, "exportVolumeToFile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        session.prepareDataset(scene, work / "runs_full", model_path, now=0)
    assert list((work / "runs_full").iterdir()) == []  # the output folder the user chose stays, empty
    full_after["cases"] = 1
    pair = (volume, logic.segmentationNode)
    with pytest.raises(OSError, match="No space left"):
        session.exportScenePairs([pair, pair], work / "Dataset_full",
                                 {c.name: c.label for c in logic.thresholdSession.classes})
    assert written, "the first case was not written: the failure came too early to test anything"
    assert [p.name for p in work.iterdir() if "Dataset_full" in p.name] == []


def _step(kind, requirement="", arguments=(), optional=False):
    return Logic.InstallStep(kind, requirement, f"{kind.value} {requirement}".strip(), list(arguments), optional)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_dependency_installer_runs_each_step_and_polls_the_build():
    calls, status = [], []
    actions = Logic.InstallActions(installTorch=lambda requirement: calls.append(("torch", requirement)),
                                   pipInstall=lambda arguments: calls.append(("pip", arguments)))
    build = _python("import time\nfor line in ('cpu: built', 'cuda: skipped'):\n print(line, flush=True)\n"
                    " time.sleep(0.3)\n")
    plan = [_step(Logic.StepKind.TORCH, "torch>=2.1"), _step(Logic.StepKind.PIP, "never_imported_pkg>=1", ["x>=1"]),
            _step(Logic.StepKind.BUILD_OPS, arguments=build, optional=True)]
    installer = Logic.DependencyInstaller(plan, actions, status.append)
    polls = 0
    while installer.poll():
        polls += 1
        assert polls < 500, "the installer did not finish"
        time.sleep(0.01)
    assert calls == [("torch", ">=2.1"), ("pip", ["x>=1"])]
    assert polls > 3, "the build must be polled, not waited for"
    assert status[:3] == ["Step 1/3: torch torch>=2.1...", "Step 2/3: pip never_imported_pkg>=1...",
                          "Step 3/3: build-ops..."]
    assert "build-ops: cuda: skipped" in status
    assert installer.error is None and installer.warnings == []
    assert installer.restartNeeded == ("torch" in sys.modules)
    outcome = installer.outcome([])
    assert outcome.offerRestart == installer.restartNeeded
    assert installer.outcome([Logic.MissingDependency("monai", "1.4")]).offerRestart


def test_dependency_installer_stops_at_a_failed_required_step_and_warns_for_an_optional_one():
    def refuse(arguments):
        raise RuntimeError("no network")

    calls = []
    actions = Logic.InstallActions(installTorch=lambda requirement: calls.append(requirement), pipInstall=refuse)
    failing_build = _python("print('compiler error', flush=True); raise SystemExit(1)")
    plan = [_step(Logic.StepKind.BUILD_OPS, arguments=failing_build, optional=True),
            _step(Logic.StepKind.PIP, "monai>=1.4", ["monai>=1.4"]), _step(Logic.StepKind.TORCH, "torch")]
    installer = Logic.DependencyInstaller(plan, actions)
    deadline = time.monotonic() + 60
    while installer.poll():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert installer.warnings and "exit code 1" in installer.warnings[0] and "compiler error" in installer.warnings[0]
    assert installer.error == "pip monai>=1.4: no network"
    assert calls == [], "no step runs after a required one failed"
    outcome = installer.outcome([])
    assert not outcome.offerRestart and outcome.message.startswith("Installing MaskMed's dependencies failed")


def test_loss_curve_nodes_follow_the_loss_history_and_come_back_after_a_scene_clear():
    scene = slicer.vtkMRMLScene()
    curve = Logic.LossCurve(scene)
    curve.update([])
    assert curve.tableNode is None and scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    curve.update([0.9, 0.5])
    curve.update([0.9, 0.5, 0.25])
    table = curve.tableNode.GetTable()
    assert [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())] == ["epoch", "loss"]
    assert [table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())] == [0.9, 0.5, 0.25]
    assert [table.GetValue(r, 0).ToDouble() for r in range(table.GetNumberOfRows())] == [1.0, 2.0, 3.0]
    chart = scene.GetNodeByID(curve.viewNode.GetPlotChartNodeID())
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == curve.tableNode.GetID() and series.GetYColumnName() == "loss"
    scene.Clear(0)
    curve.update([0.7])
    assert curve.tableNode.GetScene() is scene and curve.tableNode.GetTable().GetNumberOfRows() == 1


def test_panel_texts_for_dependencies_and_training_events():
    torch_missing = [Logic.MissingDependency("torch", "2.1")]
    assert Logic.dependencyStatus([], False) == "All dependencies are installed."
    assert "PyTorch extension, which is not installed" in Logic.dependencyStatus(torch_missing, False)
    assert "which is not installed" not in Logic.dependencyStatus(torch_missing, True)
    plan = Logic.installPlan(torch_missing)
    question = Logic.installConfirmation(torch_missing, plan)
    assert "torch >= 2.1 (not installed)" in question and f"  {len(plan)}. {plan[-1].description}" in question

    assert Logic.describeTrainingEvent(StepEvent(3, 12, 0.5, 1.0)) == (25, "Step 3/12: loss 0.5000")
    # With the time left (a --time-limit run ends at 20 % of its steps): the bar follows the clock.
    assert Logic.describeTrainingEvent(StepEvent(3, 1000, 0.5, 30.0, 90.0)) == (25, "Step 3/1000: loss 0.5000, "
                                                                               "1 min 30 s left")
    assert Logic.describeTrainingEvent(EpochEvent(2, 4, 0.25, 1e-3, 5.0)) == (None, "Epoch 2: loss 0.2500")
    assert Logic.describeTrainingEvent(EpochEvent(2, 4, 0.25, 1e-3, 5.0, mean_dice=0.5))[1].endswith(
        ", validation Dice 0.500")
    assert Logic.describeTrainingEvent(MessageEvent("info", "resumed at step 4")) == (None, "resumed at step 4")
    assert Logic.describeTrainingEvent(LogEvent("compiling")) == (None, None)


def test_model_choices_and_recent_models(tmp_path):
    default, first, second = (tmp_path / f"{name}.maskmed" for name in ("default", "first", "second"))
    for path in (default, first, second):
        path.write_bytes(b"model")
    gone = str(tmp_path / "deleted.maskmed")
    stored = Logic.rememberModelPath(None, str(first))
    stored = Logic.rememberModelPath(stored, gone)
    stored = Logic.rememberModelPath(stored, str(second))
    assert Logic.recentModelPaths(stored) == [str(second), str(first)]  # newest first; a deleted file dropped
    assert Logic.recentModelPaths(Logic.rememberModelPath(stored, str(first))) == [str(first), str(second)]
    for unreadable in ("not json", '{"a": 1}', "[1, null]", "", None):
        assert Logic.recentModelPaths(unreadable) == []
    many = None
    for number in range(15):
        (tmp_path / f"m{number}.maskmed").write_bytes(b"model")
        many = Logic.rememberModelPath(many, str(tmp_path / f"m{number}.maskmed"))
    assert len(Logic.recentModelPaths(many)) == 10

    choices = Logic.modelChoices(str(default), [str(second), str(default)], str(first), label=lambda p: "L")
    assert choices == [(Logic.DEFAULT_MODEL_LABEL, str(default)), ("L", str(second)), ("L", str(first))]
    assert Logic.modelChoices(None, [], gone) == []  # no bundled model, the scene's model deleted


def test_segment_blockers_name_each_missing_input():
    assert Logic.segmentBlockers(False, True, "/m.maskmed") == []
    reasons = Logic.segmentBlockers(True, False, None)
    assert len(reasons) == 3 and "Install the dependencies" in reasons[0] and "input CT" in reasons[1]


def test_torch_is_installed_through_the_pytorch_extension(monkeypatch):
    """Inside Slicer the PyTorch extension's logic installs torch without a second confirmation (the panel asked
    once); without the extension, or when it installs nothing, the error says what to do."""
    import types

    calls = []

    class FakeLogic:
        result: object = object()

        def installTorch(self, askConfirmation, torchVersionRequirement):  # noqa: N802, N803
            calls.append((askConfirmation, torchVersionRequirement))
            return self.result

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeLogic))
    Logic.installTorchWithSlicerExtension(">=2.1")
    assert calls == [(False, ">=2.1")]
    FakeLogic.result = None
    with pytest.raises(RuntimeError, match="installed nothing"):
        Logic.installTorchWithSlicerExtension(None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import PyTorchUtils raises ImportError
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        Logic.installTorchWithSlicerExtension(None)


def test_progress_spans_cover_every_predict_stage():
    from MaskMedSegmentationLib.maskmedlogic import _STAGE_SPANS

    from maskmed_core.events import PREDICT_STAGES

    assert tuple(_STAGE_SPANS) == PREDICT_STAGES
    spans = list(_STAGE_SPANS.values())
    assert all(low < high for low, high in spans)
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True)), "the stages leave no gap"
