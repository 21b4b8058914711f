"""Largest-connected-component postprocessing (maskmed_core.inference.postprocessing) and its plumbing through
SegmentationResult, `maskmed predict` and `maskmed evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.inference.postprocessing import keep_largest_components
from maskmed_core.inference.result import Grid, SegmentationResult


def two_organs() -> np.ndarray:
    """Class 1: a 3x3x3 organ and a separate 1-voxel blob; class 2: two cubes touching only at a corner; class 3:
    one piece."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[9, 9, 9] = 1  # stray blob far away
    labels[5:7, 5:7, 5:7] = 2
    labels[7:9, 7:9, 7:9] = 2  # meets the first cube at the corner (6,6,6)-(7,7,7) only
    labels[10:12, 0:2, 0:2] = 3
    return labels


def test_each_class_keeps_its_largest_piece_and_nothing_else_changes():
    labels = two_organs()
    kept = keep_largest_components(labels)
    assert kept[9, 9, 9] == 0 and (kept[1:4, 1:4, 1:4] == 1).all()
    expected = labels.copy()
    expected[9, 9, 9] = 0
    assert np.array_equal(kept, expected)  # the corner-touching class 2 is one 26-connected piece: kept whole
    assert labels[9, 9, 9] == 1  # the input is not changed


def test_uint16_labels_and_a_missing_label_value():
    labels = np.zeros((6, 6, 6), np.uint16)
    labels[0:2, 0:2, 0:2] = 300
    labels[4, 4, 4] = 300
    labels[3, 0, 0] = 5  # values in between (1..299 but 5) absent
    kept = keep_largest_components(labels)
    assert kept.dtype == np.uint16 and kept[4, 4, 4] == 0 and kept[3, 0, 0] == 5 and (kept[0:2, 0:2, 0:2] == 300).all()


def test_refuses_a_label_map_that_is_not_3d():
    with pytest.raises(ValueError, match="z, y, x"):
        keep_largest_components(np.zeros((4, 4), np.uint8))


def result_with_a_stray_blob() -> SegmentationResult:
    """One query of class 1 whose mask is an organ plus a stray blob; class 2 has a single query."""
    grid = Grid((12, 12, 12), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    masks = np.zeros((2, 12, 12, 12), np.uint8)
    masks[0][two_organs() == 1] = 255
    masks[1][two_organs() == 3] = 255
    return SegmentationResult(
        masks=masks, class_given_object=np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
        objectness=np.ones(2, np.float32), classes=list(AMOS15_CLASSES[:2]), model_grid=grid, canonical_grid=grid,
        input_grid=grid,
    )


def test_result_labels_and_statistics_with_and_without_the_largest_component():
    import SimpleITK as sitk  # noqa: N813

    result = result_with_a_stray_blob()
    plain, _ = result.model_labels()
    largest, _ = result.model_labels(largest_component=True)
    assert plain[9, 9, 9] == 1 and largest[9, 9, 9] == 0
    assert np.array_equal(largest, keep_largest_components(plain))
    on_input = sitk.GetArrayFromImage(result.label_map(largest_component=True))
    assert np.array_equal(on_input, largest)
    voxels = {s.name: s.voxels for s in result.statistics(largest_component=True)}
    assert voxels == {"spleen": 27, "right kidney": 8}
    assert {s.name: s.voxels for s in result.statistics()}["spleen"] == 28


def test_predict_and_evaluate_take_largest_component(tmp_path: Path, capsys, monkeypatch):
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.cli import main
    from maskmed_core.inference import Predictor

    result = result_with_a_stray_blob()
    monkeypatch.setattr(Predictor, "from_file", classmethod(lambda cls, *a, **k: FixedPredictor(result)))
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 400, (12, 12, 12)).astype(np.int16))
    image.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    reference = sitk.GetImageFromArray(keep_largest_components(result.model_labels()[0]))
    reference.CopyInformation(image)
    sitk.WriteImage(reference, str(tmp_path / "labels.nii.gz"))

    for extra, stray in (([], 1), (["--largest-component"], 0)):
        code = main(["predict", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "--json", *extra])
        assert code == 0
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz")))
        assert written[9, 9, 9] == stray
    capsys.readouterr()

    scores = {}
    for extra in ([], ["--largest-component"]):
        code = main(["evaluate", "some.maskmed", str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz"),
                     "--json", *extra])
        assert code == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["largest_component"] == bool(extra)
        scores[bool(extra)] = report["classes"]["spleen"]["dice"]
    assert scores[True] == 1.0 and scores[False] == pytest.approx(2 * 27 / (28 + 27))


class FixedPredictor:
    """Stands in for Predictor.from_file(...): returns one prepared result for any image."""

    device = "cpu"

    def __init__(self, result: SegmentationResult):
        self.result = result
        self.classes = result.classes

    def predict(self, image, *args, **kwargs) -> SegmentationResult:
        return self.result
