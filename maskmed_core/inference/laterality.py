"""Does the image look mirrored left-right? Where the liver and spleen lie against the body's midline.

A header written with the wrong sign on the left-right axis (a converter's mistake) puts the anatomy on the wrong
side. A model trained without left-right mirroring uses the side: on such an image it names lateral organs by the
side they appear on and confuses liver and spleen (the bundled model on s0009 mirrored: the kidneys swap names, most
of the liver, now on the left, is called "spleen"; spleen Dice 0.00, liver 0.56), so the answer is confidently
wrong and the class confidences do not show it. The organs' *mass* still shows it: the liver is the
largest solid organ and lies mostly right of the midline, the spleen (a fraction of its size) left of it, so nearly
all of liver + spleen lies on the patient's right in a correctly oriented abdomen, whichever of the two names the
model gives to which voxel. When most of it lies on the left, the image is (or looks) mirrored.

The check runs on the model grid after the network (a few array passes over it, well under 10 % of a predict) and
only warns: the image is never flipped, since a true situs inversus looks the same and the user must decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskmed_core.classes import LIVER, SPLEEN, SegmentClass
from maskmed_core.inference.preprocessing import normalize_ct
from maskmed_core.inference.result import Grid, SegmentationResult
from maskmed_core.plans import IntensityNormalization

# Voxels above this (HU) are the body (soft tissue, fat at about -100, lung at about -800 is left out, so the
# midline is that of the trunk's wall and organs, not of the air around them).
BODY_HU = -500.0
# Less liver + spleen than this (mL) is too little to tell the sides: a scan of the neck, chest or pelvis that at
# most grazes them, or a model without the classes. Our CTs that show them have 368-1438 mL.
MIN_ORGAN_ML = 100.0
# Warn when more than this fraction of liver + spleen lies left of the midline: "most of it". A correctly oriented
# abdomen has a small fraction there (the spleen and the liver's left lobe: 0.09-0.27 on our three CTs with the
# organs), the same CTs mirrored 0.78-0.87 (benchmarks/mirrored.py).
MIRRORED_LEFT_FRACTION = 0.5


@dataclass(frozen=True)
class MirrorFinding:
    """Liver + spleen against the body's midline: how much of it there is (mL), the fraction left of the midline
    and its mean distance from it (mm, positive: patient's left)."""

    organ_ml: float
    left_fraction: float
    mean_offset_mm: float

    @property
    def mirrored(self) -> bool:
        return self.left_fraction > MIRRORED_LEFT_FRACTION

    def warning(self) -> str:
        return (
            "the image looks mirrored left-right: check its orientation (the header's left-right direction). "
            f"{self.left_fraction:.0%} of the {self.organ_ml:.0f} mL of liver and spleen found lies left of the "
            f"body's midline (the patient's left; {abs(self.mean_offset_mm):.0f} mm "
            f"{'left' if self.mean_offset_mm > 0 else 'right'} of it on average), where a correctly oriented abdomen "
            "has most of it on the right; left and right organs are then likely labelled wrongly"
        )


def side_organ_indices(classes: list[SegmentClass]) -> list[int]:
    """Indices of the liver and spleen classes: by SNOMED CT code, or by name for classes without terminology."""
    codes = {LIVER[1], SPLEEN[1]}
    names = {LIVER[2].lower(), SPLEEN[2].lower()}
    return [
        index
        for index, segment_class in enumerate(classes)
        if (segment_class.terminology is not None and segment_class.terminology.type.code in codes)
        or (segment_class.terminology is None and segment_class.name.strip().lower() in names)
    ]


def mirror_finding(organ: np.ndarray, body: np.ndarray, grid: Grid) -> MirrorFinding | None:
    """Where ``organ`` lies against the body's midline, slice by slice; None when there is too little to tell.

    organ, body: (z, y, x) bool on ``grid`` (a canonical grid: see ``maskmed_core.io.orientation``), the liver +
    spleen voxels and the body voxels. The midline of each axial slice is the mean patient-left coordinate (LPS x,
    mm) of its body voxels, so a patient lying off the table's centre is measured from their own midline; organ
    voxels in slices without body are left out.
    """
    spacing_xyz = np.asarray(grid.spacing, dtype=float)
    organ_ml = float(organ.sum()) * float(np.prod(spacing_xyz)) / 1000.0
    if organ_ml < MIN_ORGAN_ML:
        return None
    # Patient-left coordinate (mm) of index (x, y, z) = origin_L + step_x * x + step_y * y + step_z * z.
    step_x, step_y, _ = np.asarray(grid.direction, dtype=float).reshape(3, 3)[0] * spacing_xyz
    body_per_slice = body.sum(axis=(1, 2)).astype(float)  # (z,)
    with np.errstate(invalid="ignore", divide="ignore"):
        body_x = body.sum(axis=1) @ np.arange(body.shape[2]) / body_per_slice  # (z,) mean x index
        body_y = body.sum(axis=2) @ np.arange(body.shape[1]) / body_per_slice  # (z,) mean y index
    z, y, x = np.nonzero(organ)
    has_midline = body_per_slice[z] > 0
    if not has_midline.any():
        return None
    z, y, x = z[has_midline], y[has_midline], x[has_midline]
    offset = step_x * (x - body_x[z]) + step_y * (y - body_y[z])  # mm, positive: left of the midline
    return MirrorFinding(organ_ml, float((offset > 0).mean()), float(offset.mean()))


def body_mask(normalized: np.ndarray, intensity: IntensityNormalization) -> np.ndarray:
    """(z, y, x) bool: the voxels of a normalised CT (``preprocessing.normalize_ct``) above ``BODY_HU``."""
    return normalized > normalize_ct(np.array([BODY_HU]), intensity)[0]


def check_mirrored(result: SegmentationResult, body: np.ndarray) -> str | None:
    """The warning for a result whose liver + spleen lie mostly on the patient's left, else None.

    body: (z, y, x) bool on ``result.model_grid`` (``body_mask``). Liver + spleen are the voxels where the two
    classes' probabilities together reach 0.5 (at the default query threshold), so voxels the model splits
    between the two names count once.
    """
    indices = side_organ_indices(result.classes)
    if not indices:
        return None
    probability = result.class_probabilities(columns=indices).sum(0)  # (z, y, x)
    finding = mirror_finding((probability >= 0.5).numpy(), body, result.model_grid)
    return finding.warning() if finding is not None and finding.mirrored else None
