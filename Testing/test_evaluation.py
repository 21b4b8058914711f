"""Dice / HD95 (maskmed_core.evaluation) and `maskmed evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskmed_core.cli import main
from maskmed_core.evaluation import check_reference, class_scores, summarize
from maskmed_core.io.errors import InputError

DEMO = Path(__file__).resolve().parents[1] / "maskmed_core" / "resources" / "demo"


def test_class_scores_dice_hd95_and_statuses():
    reference = np.zeros((10, 20, 20), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[2:6, 5:15, 5:15] = 1
    prediction[2:6, 5:15, 7:17] = 1  # shifted 2 voxels along x
    reference[7:9, 2:4, 2:4] = 2  # missed
    prediction[0, 0, 0] = 3  # not in the reference
    scores = class_scores(prediction, reference, {"a": 1, "b": 2, "c": 3, "d": 4}, spacing_zyx=(1.0, 1.0, 2.0))
    assert set(scores) == {"a", "b", "c"}
    assert scores["a"]["status"] == "both" and scores["a"]["dice"] == pytest.approx(0.8)
    assert scores["a"]["hd95"] == pytest.approx(4.0)  # 2 voxels of 2 mm
    assert scores["b"] == {"dice": 0.0, "hd95": None, "status": "missed"}
    assert scores["c"]["status"] == "false_positive"
    summary = summarize(scores)
    assert summary["mean_dice"] == pytest.approx(0.4) and summary["classes_in_reference"] == 2
    assert summary["false_positive_classes"] == ["c"]


def test_class_scores_refuses_different_grids():
    with pytest.raises(ValueError, match="differ"):
        class_scores(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), {"a": 1}, (1, 1, 1))


@pytest.mark.slow
def test_evaluate_command_scores_the_bundled_model_on_the_bundled_ct(capsys):
    code = main([
        "evaluate", "default", str(DEMO / "abdomen_ct_3mm.nii.gz"), str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"),
        "--label-mapping", str(DEMO / "amos15_from_totalseg_v2.json"), "--device", "cpu", "--json",
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["classes"]["liver"]["dice"] > 0.7 and report["classes"]["liver"]["hd95"] is not None
    assert 0.3 < report["mean_dice"] <= 1.0 and report["classes_in_reference"] >= 10


def test_evaluate_command_refuses_a_missing_label_map(tmp_path, capsys):
    code = main(["evaluate", "default", str(DEMO / "abdomen_ct_3mm.nii.gz"), str(tmp_path / "missing.nii.gz")])
    assert code == 3
    assert "missing.nii.gz" in capsys.readouterr().err


def test_evaluate_command_tta_averages_mirrored_passes(tmp_path, capsys, monkeypatch):
    import SimpleITK as sitk  # noqa: N813
    from factories import tiny_model_file

    from maskmed_core.inference import Predictor

    image = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm.nii.gz"))
    labels = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"))
    crop = (slice(40, 72), slice(40, 72), slice(0, 12))
    sitk.WriteImage(image[crop], str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(labels[crop], str(tmp_path / "labels.nii.gz"))
    model = tiny_model_file(tmp_path / "tiny.maskmed", num_classes=3, patch_size=(16, 32, 32))
    passes = []
    original = Predictor.predict

    def counting(self, *args, **kwargs):
        forward = self.model.forward
        self.model.forward = lambda *a, **k: passes.append(1) or forward(*a, **k)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", counting)

    def evaluate(*extra: str) -> int:
        """Forward passes of one `maskmed evaluate` run."""
        passes.clear()
        code = main(["evaluate", str(model), str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz"),
                     "--label-mapping", str(DEMO / "amos15_from_totalseg_v2.json"), "--device", "cpu", "--json",
                     *extra])
        assert code == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["tta"] is bool(extra)
        return len(passes)

    plain, mirrored = evaluate(), evaluate("--tta")
    assert plain >= 1 and mirrored == 8 * plain


def labelled_grid(values=(1, 2), origin=(0.0, 0.0, 0.0)):
    """A 20 x 20 x 10 label map of 3 mm voxels holding ``values`` in blocks."""
    import SimpleITK as sitk  # noqa: N813

    array = np.zeros((10, 20, 20), np.uint8)
    for index, value in enumerate(values):
        array[index % 10, index // 10, :5] = value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))
    image.SetOrigin(origin)
    return image


def test_a_reference_on_the_image_s_grid_or_another_grid_of_the_same_box_passes():
    import SimpleITK as sitk  # noqa: N813

    image = labelled_grid()
    assert check_reference(image, image, [1, 2, 3], mapped=False) == []
    flipped = sitk.DICOMOrient(image, "LAS")  # the same voxels stored with the y axis flipped: the same box
    assert check_reference(image, flipped, [1, 2, 3], mapped=False) == []
    finer = sitk.Resample(image, [40, 40, 20], sitk.Transform(), sitk.sitkNearestNeighbor, (-0.75, -0.75, -0.75),
                          (1.5, 1.5, 1.5))
    assert check_reference(image, finer, [1, 2, 3], mapped=False) == []


def test_a_reference_30_mm_away_is_warned_about_and_one_elsewhere_refused():
    image = labelled_grid()
    (warning,) = check_reference(image, labelled_grid(origin=(30.0, 0.0, 0.0)), [1, 2], mapped=False)
    assert "does not cover the same region as the image: their boxes differ by up to 30.0 mm" in warning
    with pytest.raises(InputError, match="do not overlap in space"):
        check_reference(image, labelled_grid(origin=(0.0, 0.0, 300.0)), [1, 2], mapped=False)


def test_reference_values_of_another_labelling_are_refused_without_a_mapping():
    image = labelled_grid()
    totalseg = labelled_grid(values=(5, 1, 2, 3, 26, 27, 28, 52, 90))  # liver 5, spleen 1, ..., vertebrae, aorta
    with pytest.raises(InputError, match="5 of the reference's 9 label values \\(26, 27, 28, 52, 90\\).*"
                                         "--label-mapping FILE"):
        check_reference(image, totalseg, range(1, 16), mapped=False)
    assert check_reference(image, totalseg, range(1, 16), mapped=True) == []  # values already mapped
    (warning,) = check_reference(image, labelled_grid(values=(1, 2, 16)), range(1, 16), mapped=False)
    assert "label values 16 are not label values of the model's classes and are scored as background" in warning


def test_evaluate_command_refuses_totalsegmentator_ids_without_a_mapping(capsys):
    code = main(["evaluate", "default", str(DEMO / "abdomen_ct_3mm.nii.gz"),
                 str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"), "--device", "cpu"])
    assert code == 3
    assert "it uses another labelling (TotalSegmentator ids, for example); give --label-mapping" in (
        capsys.readouterr().err)


def test_evaluate_command_warns_about_a_shifted_reference_in_text_and_json(tmp_path, capsys):
    import SimpleITK as sitk  # noqa: N813
    from factories import tiny_model_file

    crop = (slice(40, 72), slice(40, 72), slice(0, 12))
    sitk.WriteImage(sitk.ReadImage(str(DEMO / "abdomen_ct_3mm.nii.gz"))[crop], str(tmp_path / "ct.nii.gz"))
    labels = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"))[crop]
    labels.SetOrigin(tuple(np.add(labels.GetOrigin(), (0.0, 0.0, 30.0))))
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    model = tiny_model_file(tmp_path / "tiny.maskmed", num_classes=3, patch_size=(16, 32, 32))
    arguments = ["evaluate", str(model), str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz"),
                 "--label-mapping", str(DEMO / "amos15_from_totalseg_v2.json"), "--device", "cpu"]
    assert main(arguments) == 0
    assert "maskmed: warning: the reference label map does not cover the same region" in capsys.readouterr().err
    assert main([*arguments, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any("their boxes differ by up to 30.0 mm" in w for w in report["warnings"])
