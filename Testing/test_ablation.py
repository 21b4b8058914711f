"""benchmarks/ablation.py's metric and report helpers on small synthetic label maps, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import ablation

NAMES = ["liver", "spleen", "aorta", "pancreas"]


def _maps() -> tuple[np.ndarray, np.ndarray]:
    """Class 1: two 6-voxel cubes, the predicted one shifted 2 voxels along z; class 2 only in the reference
    (missed); class 3 only in the prediction (false positive); class 4 in neither."""
    reference = np.zeros((12, 10, 10), np.uint8)
    prediction = np.zeros_like(reference)
    reference[1:7, 2:8, 2:8] = 1
    prediction[3:9, 2:8, 2:8] = 1
    reference[10:12, 0:2, 0:2] = 2
    prediction[10:12, 8:10, 8:10] = 3
    return prediction, reference


def test_case_metrics_shifted_cubes_and_absent_classes():
    prediction, reference = _maps()
    scores = ablation.case_metrics(prediction, reference, NAMES, spacing_zyx=(2.0, 1.0, 1.0))
    assert set(scores) == {"liver", "spleen", "aorta"}  # pancreas: in neither, skipped
    liver = scores["liver"]
    assert liver["status"] == "both"
    assert liver["dice"] == pytest.approx(4 / 6)  # overlap 4 of 6 slices
    # Every surface voxel of the cube's far face is exactly 2 slices x 2 mm from the other cube's surface, and
    # those faces are 36 of the 152 surface voxels (> 5 %), so the 95th percentile is that distance, both ways.
    assert liver["hd95"] == pytest.approx(4.0)
    assert scores["spleen"] == {"dice": 0.0, "hd95": None, "status": "missed"}
    assert scores["aorta"] == {"dice": 0.0, "hd95": None, "status": "false_positive"}


def test_summarize_counts_missed_as_zero_and_leaves_hd95_missing():
    prediction, reference = _maps()
    summary = ablation.summarize(ablation.case_metrics(prediction, reference, NAMES, (2.0, 1.0, 1.0)))
    assert summary["classes_in_reference"] == 2  # the reference's classes: liver, spleen
    assert summary["mean_dice"] == pytest.approx((4 / 6 + 0.0) / 2)
    assert summary["mean_hd95"] == pytest.approx(4.0)
    assert summary["classes_with_hd95"] == 1
    assert summary["missed_classes"] == ["spleen"]
    assert summary["false_positive_classes"] == ["aorta"]


def test_average_over_folds_uses_only_folds_with_the_class():
    fold_a = {"liver": {"dice": 0.8, "hd95": 5.0, "status": "both"},
              "spleen": {"dice": 0.0, "hd95": None, "status": "missed"}}
    fold_b = {"liver": {"dice": 0.6, "hd95": 7.0, "status": "both"},
              "aorta": {"dice": 0.0, "hd95": None, "status": "false_positive"}}
    averaged = ablation.average_over_folds([fold_a, fold_b])
    assert list(averaged) == ["liver", "spleen"]
    assert averaged["liver"] == {"dice": pytest.approx(0.7), "hd95": pytest.approx(6.0), "folds": 2}
    assert averaged["spleen"] == {"dice": 0.0, "hd95": None, "folds": 1}


def test_table_and_verdict():
    prediction, reference = _maps()
    scores = ablation.case_metrics(prediction, reference, NAMES, (2.0, 1.0, 1.0))
    rows = {n: {"maskmed": scores[n]} for n in ("liver", "spleen")}
    table = ablation.format_table("fold x", rows, ["maskmed"], {"maskmed": ablation.summarize(scores)})
    spleen = next(line for line in table.splitlines() if line.startswith("spleen"))
    assert spleen.split()[1:] == ["0.000", ablation.MISSING]
    mean = next(line for line in table.splitlines() if line.startswith("mean"))
    assert mean.split()[1:] == ["0.333", "4.0"]
    line = ablation.verdict({"maskmed": 0.5, "conv": 0.4, "no_fsa": 0.45},
                            {"maskmed": [0.6, 0.4], "conv": [0.3, 0.5], "no_fsa": [0.5, 0.4]})
    assert line.startswith("maskmed wins on mean Dice: 0.500 vs no_fsa 0.450 (+0.050), conv 0.400 (+0.100)")
    assert "best in 1 of 2 fold(s)" in line
    assert ablation.verdict({"maskmed": 0.2, "conv": 0.2}).startswith("no winner on mean Dice: maskmed, conv tie")
