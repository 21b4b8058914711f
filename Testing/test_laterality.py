"""The left-right mirrored image check (``maskmed_core.inference.laterality``): the decision rule on synthetic label
maps, and the warning on the bundled real CT mirrored, through ``maskmed predict`` and its JSON events."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from maskmed_core.classes import AMOS15_CLASSES, SegmentClass
from maskmed_core.inference.laterality import (
    MIN_ORGAN_ML,
    check_mirrored,
    mirror_finding,
    side_organ_indices,
)
from maskmed_core.inference.result import Grid, SegmentationResult

MIRRORED_PHRASE = "the image looks mirrored left-right: check its orientation"
SPLEEN, LIVER = 1, 6  # AMOS labels
SHAPE = (30, 40, 70)  # (z, y, x) at 3 mm; x runs from the patient's right to the left (LPS)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
GRID = Grid(SHAPE[::-1], (3.0, 3.0, 3.0), (-100.0, -60.0, 0.0), IDENTITY)  # type: ignore[arg-type]


def body(centre_x: int = 35) -> np.ndarray:
    """(z, y, x) bool: an elliptic trunk 50 voxels (150 mm) wide, centred on x = ``centre_x``."""
    _, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return np.broadcast_to(((x - centre_x) / 25.0) ** 2 + ((y - 20) / 15.0) ** 2 <= 1.0, SHAPE)


def abdomen(centre_x: int = 35, big: int = LIVER, small: int = SPLEEN) -> np.ndarray:
    """(z, y, x) label map: a large organ right of the midline x = ``centre_x`` (175 mL), a small one left of it
    (16 mL)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:25, 10:28, centre_x - 20 : centre_x - 2] = big
    labels[8:18, 12:22, centre_x + 8 : centre_x + 14] = small
    return labels


def mirror_about(labels: np.ndarray, centre_x: int) -> np.ndarray:
    """The label map flipped left-right about x = ``centre_x`` (voxels that leave the grid are dropped)."""
    flipped = np.zeros_like(labels)
    x = np.arange(SHAPE[2])
    mirrored_x = 2 * centre_x - x
    inside = (mirrored_x >= 0) & (mirrored_x < SHAPE[2])
    flipped[:, :, mirrored_x[inside]] = labels[:, :, x[inside]]
    return flipped


def result_from_labels(labels: np.ndarray, classes=AMOS15_CLASSES, grid: Grid = GRID) -> SegmentationResult:
    """A result with one certain query per class present, whose mask is that class's voxels."""
    present = [c for c in classes if (labels == c.label).any()] or [classes[0]]
    masks = np.stack([np.where(labels == c.label, 255, 0).astype(np.uint8) for c in present])
    class_given_object = np.zeros((len(present), len(classes)), np.float32)
    for query, segment_class in enumerate(present):
        class_given_object[query, list(classes).index(segment_class)] = 1.0
    return SegmentationResult(masks, class_given_object, np.ones(len(present), np.float32), list(classes), grid,
                              grid, grid)


def organ(labels: np.ndarray) -> np.ndarray:
    return (labels == LIVER) | (labels == SPLEEN)


def test_a_correctly_oriented_abdomen_is_not_warned_about():
    labels = abdomen()
    finding = mirror_finding(organ(labels), body(), GRID)
    assert finding is not None and not finding.mirrored
    assert finding.left_fraction < 0.2 and finding.mean_offset_mm < -20 and finding.organ_ml > MIN_ORGAN_ML
    assert check_mirrored(result_from_labels(labels), body()) is None


def test_the_same_abdomen_mirrored_is_warned_about_with_what_was_seen():
    labels = mirror_about(abdomen(), 35)
    finding = mirror_finding(organ(labels), body(), GRID)
    assert finding is not None and finding.mirrored and finding.left_fraction > 0.8
    warning = check_mirrored(result_from_labels(labels), body())
    assert warning is not None and warning.startswith(MIRRORED_PHRASE)
    assert f"{finding.left_fraction:.0%} of the {finding.organ_ml:.0f} mL of liver and spleen" in warning


def test_a_model_that_names_organs_by_their_side_is_caught_too():
    """Mirrored anatomy labelled by side (the large organ, now on the left, called spleen; the small one on the
    right called liver): the names look right, the mass does not."""
    labels = mirror_about(abdomen(big=SPLEEN, small=LIVER), 35)
    assert (labels == SPLEEN).sum() > (labels == LIVER).sum()
    assert check_mirrored(result_from_labels(labels), body()) is not None


def test_the_midline_is_the_body_s_not_the_image_s():
    """A patient lying far to one side of the table: the organs are judged against their own trunk."""
    off_centre = 44  # the trunk's centre 9 voxels left of the grid's
    labels = abdomen(centre_x=off_centre)
    assert check_mirrored(result_from_labels(labels), body(off_centre)) is None
    assert check_mirrored(result_from_labels(mirror_about(labels, off_centre)), body(off_centre)) is not None


def test_the_sides_follow_the_grid_direction():
    """The same voxels on a grid whose x axis points to the patient's right (RPS): mirrored in physical space."""
    rps = dataclasses.replace(GRID, direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    assert check_mirrored(result_from_labels(abdomen(), grid=rps), body()) is not None


def test_too_little_liver_and_spleen_or_no_such_class_gives_no_verdict():
    tiny = np.zeros(SHAPE, np.uint8)
    tiny[10:14, 10:14, 40:44] = LIVER  # 64 voxels of 27 uL: under MIN_ORGAN_ML, whatever its side
    assert mirror_finding(organ(tiny), body(), GRID) is None
    assert check_mirrored(result_from_labels(tiny), body()) is None
    no_body = np.zeros(SHAPE, bool)
    assert mirror_finding(organ(mirror_about(abdomen(), 35)), no_body, GRID) is None
    kidneys_only = [c for c in AMOS15_CLASSES if "kidney" in c.name]
    assert side_organ_indices(kidneys_only) == []
    assert check_mirrored(result_from_labels(np.zeros(SHAPE, np.uint8), kidneys_only), body()) is None


def test_liver_and_spleen_are_found_by_code_or_by_name():
    assert [AMOS15_CLASSES[i].name for i in side_organ_indices(list(AMOS15_CLASSES))] == ["spleen", "liver"]
    plain = [SegmentClass(1, "Liver", (1, 2, 3)), SegmentClass(2, "kidney", (1, 2, 3)),
             SegmentClass(3, " SPLEEN ", (1, 2, 3))]
    assert side_organ_indices(plain) == [0, 2]
    labels = mirror_about(abdomen(big=1, small=3), 35)
    assert check_mirrored(result_from_labels(labels, plain), body()) is not None


@pytest.mark.demo_data
@pytest.mark.slow
def test_the_bundled_ct_mirrored_warns_in_the_cli_and_json_and_the_original_does_not(tmp_path, capsys):
    """The default model on the bundled held-out CT (s0009) and on a copy whose voxels are flipped along x with
    the header kept: a warning event for the copy only (one run, both cases)."""
    from maskmed_core.cli import main
    from maskmed_core.demo_command import HELD_OUT_CT

    image = sitk.ReadImage(str(HELD_OUT_CT))
    mirrored = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
    mirrored.CopyInformation(image)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(image, str(inputs / "original.nii.gz"))
    sitk.WriteImage(mirrored, str(inputs / "mirrored.nii.gz"))
    code = main(["predict", str(inputs), "-o", str(tmp_path / "out"), "--device", "cpu", "--json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    warnings = [e["text"] for e in events if e["event"] == "message" and e["level"] == "warning"]
    assert len(warnings) == 1 and MIRRORED_PHRASE in warnings[0], warnings
    assert warnings[0].startswith(str(inputs / "mirrored.nii.gz"))
    # and in the human-readable output
    main(["predict", str(inputs / "mirrored.nii.gz"), "-o", str(tmp_path / "out2"), "--device", "cpu"])
    assert f"maskmed: warning: {inputs / 'mirrored.nii.gz'}: {MIRRORED_PHRASE}" in capsys.readouterr().err
