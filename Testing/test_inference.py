"""From a CT to a segmentation: geometry, re-thresholding, progress, cancel, writers, TTA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from factories import tiny_model, tiny_model_file

from maskmed_core.checkpoint import load_model_file
from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.inference import InferenceCancelled, Predictor, SegmentationResult
from maskmed_core.inference import sliding_window as sliding_window_module
from maskmed_core.inference.predictor import lateral_pairs
from maskmed_core.inference.sliding_window import gaussian_importance, sliding_window, window_starts
from maskmed_core.inference.writers import write_labels
from maskmed_core.model import MaskMed

THRESHOLDS = [(0.0, 0.05), (0.1, 0.1), (0.2, 0.3), (0.9, 0.05)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.maskmed")


@pytest.fixture(scope="module")
def predictor(model_path):
    return Predictor.from_file(model_path, "cpu")


@pytest.fixture(scope="module")
def ct_crop(demo_data):
    """A 64 x 60 x 40 voxel crop of the real 3 mm CT (x, y, z), geometry kept."""
    image = sitk.ReadImage(str(demo_data.ct))
    return image[30:94, 20:80, 60:100]


def physical_labels(label_image, reference):
    """Label image resampled (nearest) onto ``reference``'s grid: compares segmentations by physical position."""
    return sitk.GetArrayFromImage(sitk.Resample(label_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def test_window_starts_cover_the_axis():
    assert window_starts(10, 32, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:], strict=False))
    assert gaussian_importance((4, 6, 8)).min() > 0


def test_rethreshold_equals_fresh_predict_and_survives_save(predictor, ct_crop, tmp_path):
    result = predictor.predict(ct_crop)
    assert result.masks.dtype == np.uint8
    saved = SegmentationResult.load(result.save(tmp_path / "case.maskmed-result"))
    fresh = predictor.predict(ct_crop)
    seen = set()
    for query_threshold, class_threshold in THRESHOLDS:
        labels = sitk.GetArrayFromImage(result.label_map(query_threshold, class_threshold))
        seen.add(tuple(np.unique(labels)))
        np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(fresh.label_map(query_threshold, class_threshold)))
        np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(saved.label_map(query_threshold, class_threshold)))
    assert len(seen) > 1, "the thresholds should change the segmentation"


def test_output_lies_on_the_input_grid(predictor, ct_crop):
    label_image = predictor.predict(ct_crop).label_map(0.0, 0.05)
    assert label_image.GetSize() == ct_crop.GetSize()
    assert label_image.GetSpacing() == ct_crop.GetSpacing()
    assert label_image.GetOrigin() == ct_crop.GetOrigin()
    assert label_image.GetDirection() == ct_crop.GetDirection()


def _copies(image):
    """Physically equivalent copies (flipped, permuted, LPS/RAS/LAS storage) of ``image``."""
    yield "flip x", sitk.Flip(image, [True, False, False])
    yield "flip y", sitk.Flip(image, [False, True, False])
    yield "flip z", sitk.Flip(image, [False, False, True])
    yield "permuted", sitk.PermuteAxes(image, [2, 0, 1])
    yield "RAS", sitk.DICOMOrient(image, "RAS")
    yield "LPS", sitk.DICOMOrient(image, "LPS")
    yield "LAS", sitk.DICOMOrient(image, "LAS")


def test_same_segmentation_in_physical_space_for_every_storage(predictor, ct_crop):
    reference = physical_labels(predictor.predict(ct_crop).label_map(0.0, 0.05), ct_crop)
    assert len(np.unique(reference)) > 1
    for name, copy in _copies(ct_crop):
        labels = predictor.predict(copy).label_map(0.0, 0.05)
        assert labels.GetSize() == copy.GetSize() and labels.GetDirection() == copy.GetDirection(), name
        np.testing.assert_array_equal(physical_labels(labels, ct_crop), reference, err_msg=name)


def test_oblique_volume_keeps_its_direction(predictor, ct_crop):
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    oblique = sitk.Image(ct_crop)
    oblique.SetDirection(tuple((rotation @ np.array(ct_crop.GetDirection()).reshape(3, 3)).ravel()))
    labels = predictor.predict(oblique).label_map(0.0, 0.05)
    assert labels.GetDirection() == oblique.GetDirection() and labels.GetOrigin() == oblique.GetOrigin()
    # The same voxels, only rotated in space: the segmentation rotates with them.
    expected = predictor.predict(ct_crop).label_map(0.0, 0.05)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(expected))


def test_dicom_series_output_is_on_the_series_grid(predictor, shared_data):
    folder = shared_data / "ct" / "chest_abdomen_dicom"
    result = predictor.predict(folder)
    labels = result.label_map(0.0, 0.05)
    assert labels.GetSize() == (512, 512, 20)
    reader_grid = result.input_grid
    assert labels.GetOrigin() == reader_grid.origin and labels.GetSpacing() == reader_grid.spacing


def test_progress_and_cancel(predictor, ct_crop):
    events = []
    predictor.predict(ct_crop, progress=lambda fraction, stage: events.append((stage, fraction)))
    stages = [stage for stage, _ in events]
    assert stages[0] == "reading" and stages[-1] == "finishing" and "inference" in stages
    inference = [f for stage, f in events if stage == "inference"]
    assert inference == sorted(inference) and inference[-1] == 1.0

    patches_after_cancel = []
    cancelled = {"now": False}

    def progress(fraction, stage):
        if stage == "inference":
            if cancelled["now"]:
                patches_after_cancel.append(fraction)
            cancelled["now"] = True

    with pytest.raises(InferenceCancelled):
        predictor.predict(ct_crop, progress=progress, cancel=lambda: cancelled["now"])
    assert patches_after_cancel == [], "cancel must stop before the next patch"


def test_volume_smaller_than_a_patch_is_padded(predictor, ct_crop):
    small = ct_crop[10:30, 10:25, 5:15]
    labels = predictor.predict(small).label_map(0.0, 0.05)
    assert labels.GetSize() == small.GetSize()


def test_seg_nrrd_opens_with_slicerio_and_matches_the_label_map(predictor, ct_crop, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    result = predictor.predict(ct_crop)
    label_image = result.label_map(0.0, 0.05)
    path = write_labels(label_image, result.classes, tmp_path / "case.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    names = [segment["name"] for segment in segmentation["segments"]]
    assert names == [c.name for c in result.classes]
    kidney = slicerio.segment_from_name(segmentation, "right kidney")
    assert kidney["terminology"]["type"][1] == "64033007" and kidney["terminology"]["typeModifier"][1] == "24028007"
    np.testing.assert_allclose(kidney["color"], [c / 255 for c in AMOS15_CLASSES[1].color], atol=1e-6)
    voxels = segmentation["voxels"]  # (i, j, k)
    np.testing.assert_array_equal(voxels.transpose(2, 1, 0), sitk.GetArrayFromImage(label_image))
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    np.testing.assert_allclose(ijk_to_lps[:3, 3], label_image.GetOrigin(), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_statistics_report_volume_in_millilitres(predictor, ct_crop):
    result = predictor.predict(ct_crop)
    labels = sitk.GetArrayFromImage(result.label_map(0.0, 0.05))
    for stats in result.statistics(0.0, 0.05):
        assert stats.voxels == int((labels == stats.label).sum())
        assert stats.volume_ml == pytest.approx(stats.voxels * 27.0 / 1000)
        assert stats.mean_confidence >= 0.0


def test_lateral_pairs_from_terminology():
    pairs = lateral_pairs(list(AMOS15_CLASSES))
    names = {(AMOS15_CLASSES[a].name, AMOS15_CLASSES[b].name) for a, b in pairs}
    assert names == {("left kidney", "right kidney"), ("left adrenal gland", "right adrenal gland")}


def test_lateral_pairs_from_names_where_the_terminology_names_no_side():
    """A user's "left iliopsoas" / "right iliopsoas" (no terminology) are partners whatever the spelling of the side;
    a side without a partner, or partners known one by code and one by name only, are not paired."""
    from maskmed_core.classes import SegmentClass, lateral_classes_without_partner

    colour = (1, 2, 3)
    classes = [*AMOS15_CLASSES, SegmentClass(16, "Left Iliopsoas", colour), SegmentClass(17, "iliopsoas_right", colour),
               SegmentClass(18, "lung, left", colour), SegmentClass(19, "righteous", colour)]
    pairs = {(classes[a].name, classes[b].name) for a, b in lateral_pairs(classes)}
    assert ("Left Iliopsoas", "iliopsoas_right") in pairs and len(pairs) == 3
    assert [classes[i].name for i in lateral_classes_without_partner(classes)] == ["lung, left"]
    mixed = [AMOS15_CLASSES[2], SegmentClass(4, "right kidney", colour)]  # left kidney by code, right by name only
    assert lateral_pairs(mixed) == [] and lateral_classes_without_partner(mixed) == [0, 1]


class _PositionalModel(MaskMed):
    """A conv-head 'network' that calls the left half of its input (high x in LPS order) left kidney."""

    def forward(self, image):
        b, _, d, h, w = image.shape
        logits = torch.full((b, 4, d, h, w), -10.0)
        x = torch.arange(w)
        left = x >= w // 2
        logits[:, 2, :, :, left] = 10.0  # channel 2 = class index 1 = left kidney (channel 0 is background)
        logits[:, 3, :, :, ~left] = 10.0
        return {"seg_logits": logits, "aux_seg_logits": []}


def test_mirroring_tta_never_confuses_left_and_right():
    classes = [AMOS15_CLASSES[0], AMOS15_CLASSES[2], AMOS15_CLASSES[1]]  # spleen, left kidney, right kidney
    model = _PositionalModel(tiny_model(num_classes=3, kind="conv").config)
    volume = np.zeros((8, 8, 16), dtype=np.float32)
    pairs = lateral_pairs(classes)
    plain = sliding_window(model, volume, (8, 8, 16), lateral_pairs=pairs)
    mirrored = sliding_window(model, volume, (8, 8, 16), mirror_axes=(0, 1, 2), lateral_pairs=pairs)
    np.testing.assert_allclose(mirrored.masks, plain.masks, atol=1e-6)
    # Without the swap the left-right mirror would mix the two kidneys half and half.
    confused = sliding_window(model, volume, (8, 8, 16), mirror_axes=(2,), lateral_pairs=[])
    assert np.abs(confused.masks - plain.masks).max() > 0.4


def test_volume_smaller_than_the_patch_sits_at_its_centre():
    """Padded on both sides alike (as nnU-Net pads): the positional model's split at the patch's middle falls
    in the middle of an 8-voxel-wide volume in a 16-wide patch, not past its end (which gave all right kidney)."""
    model = _PositionalModel(tiny_model(num_classes=3, kind="conv").config)
    stitched = sliding_window(model, np.zeros((5, 8, 8), dtype=np.float32), (8, 8, 16))
    assert stitched.masks.shape == (3, 5, 8, 8)
    left, right = stitched.masks[1], stitched.masks[2]  # class index 1 = left kidney (high x), 2 = right kidney
    np.testing.assert_allclose(left[..., 4:], 1.0, atol=1e-4)
    np.testing.assert_allclose(right[..., :4], 1.0, atol=1e-4)
    assert left[..., :4].max() < 1e-4 and right[..., 4:].max() < 1e-4


class _PositionalQueries(MaskMed):
    """A decoupled-head 'network' whose query 0 finds the left kidney on the high-x half of its input, query 1
    the right kidney on the low-x half, and the other queries nothing: query identity follows image position."""

    def forward(self, image):
        b, _, d, h, w = image.shape
        queries, classes = self.config.head.num_queries, self.config.num_classes
        high_x = (torch.arange(w) >= w // 2).float() * 20.0 - 10.0
        features = torch.stack((high_x, -high_x)).view(1, 2, 1, 1, w).expand(b, 2, d, h, w)
        embed = torch.zeros(b, queries, 2)
        embed[:, 0, 0] = embed[:, 1, 1] = 1.0
        logits = torch.full((b, queries, classes + 1), -10.0)
        logits[:, :, -1] = 10.0  # no object
        logits[:, 0, 1], logits[:, 0, -1] = 10.0, -10.0  # class index 1 = left kidney
        logits[:, 1, 2], logits[:, 1, -1] = 10.0, -10.0  # class index 2 = right kidney
        return {"pred_logits": logits, "pred_mask_embed": embed, "mask_features": features}


def test_mirroring_tta_matches_queries_that_swap_with_the_mirror(monkeypatch):
    classes = [AMOS15_CLASSES[0], AMOS15_CLASSES[2], AMOS15_CLASSES[1]]  # spleen, left kidney, right kidney
    model = _PositionalQueries(tiny_model(num_classes=3).config)
    volume = np.zeros((8, 8, 16), dtype=np.float32)
    pairs = lateral_pairs(classes)
    plain = sliding_window(model, volume, (8, 8, 16), lateral_pairs=pairs)
    mirrored = sliding_window(model, volume, (8, 8, 16), mirror_axes=(0, 1, 2), lateral_pairs=pairs)
    np.testing.assert_allclose(mirrored.masks[:2], plain.masks[:2], atol=1e-4)
    np.testing.assert_allclose(mirrored.class_given_object[:2], plain.class_given_object[:2], atol=1e-4)
    # Averaged by query index instead, each kidney query would be half left kidney, half right kidney.
    monkeypatch.setattr(sliding_window_module, "match_queries",
                        lambda pi, masks, *_: torch.arange(pi.shape[1]).expand(pi.shape[:2]))
    by_index = sliding_window(model, volume, (8, 8, 16), mirror_axes=(2,), lateral_pairs=pairs)
    assert np.abs(by_index.class_given_object[:2] - plain.class_given_object[:2]).max() > 0.4


def test_model_file_is_used_as_saved(model_path):
    model_file = load_model_file(model_path)
    assert model_file.plans.patch_size == (32, 48, 48)


def test_seg_nrrd_names_beyond_ascii_are_written_as_slicer_writes_them(tmp_path):
    """Non-ASCII class names ("Leber (Hépar)", "Milz 脾臓") are UTF-8 bytes in the header, as Slicer's own storage node
    writes them, and Slicer's reader gives the names back (they crashed the writer after inference before)."""
    slicer = pytest.importorskip("slicer")
    from maskmed_core.classes import SegmentClass
    from maskmed_core.inference.writers import write_seg_nrrd

    voxels = np.zeros((4, 5, 6), dtype=np.uint8)
    voxels[1], voxels[2] = 1, 2
    classes = [SegmentClass(1, "Leber (Hépar)", (1, 2, 3)), SegmentClass(2, "Milz 脾臓", (3, 4, 5)),
               SegmentClass(3, "liver", (5, 6, 7))]
    path = write_seg_nrrd(sitk.GetImageFromArray(voxels), classes, tmp_path / "ours.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [c.name for c in classes]
    # Slicer writing the segmentation it read: the name lines carry the same bytes.
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert storage.WriteData(node)

    def name_lines(file):
        header = file.read_bytes().split(b"\n\n", 1)[0]
        return sorted(line.split(b":=", 1)[1] for line in header.split(b"\n") if b"_Name:=" in line)

    assert name_lines(path) == name_lines(tmp_path / "slicer.seg.nrrd") == sorted(c.name.encode() for c in classes)
