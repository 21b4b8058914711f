"""The dataset fingerprint (spacings, shapes, foreground intensities) and the plans derived from it, as nnU-Net does.

Intensity statistics come from CT voxels inside the foreground (label > 0 after the label mapping): nnU-Net samples
a fixed number of them per case (with replacement), pools the samples of all cases and takes the 0.5th and 99.5th
percentiles (the clipping range) and the mean and standard deviation (the z-score) of the pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from maskmed_core.io import InputError, to_canonical
from maskmed_core.plans import IntensityNormalization, Plans
from maskmed_core.training.dataset import DatasetSpec, LabelMapping, read_case
from maskmed_core.training.options import OptionError

# The total stride of the `small` network (four 2x downsamplings): every patch axis must be a multiple of it.
NETWORK_STRIDE = 16
MIN_PATCH_AXIS = 32
# About what a CPU trains on in reasonable time and memory: 96 x 96 x 96 voxels.
CPU_MAX_PATCH_VOXELS = 96**3


@dataclass
class Fingerprint:
    """What plans are derived from.

    median_spacing_zyx: per-axis median voxel spacing (mm) over the cases, canonical (z, y, x) order.
    foreground_percentile_00_5 / _99_5: 0.5th / 99.5th percentile of the sampled foreground intensities (HU).
    foreground_mean / foreground_std: mean and standard deviation of those samples (HU).
    median_shape_zyx: per-axis median image size (voxels, canonical (z, y, x), at each case's own spacing).
    num_cases: number of cases the fingerprint was computed from.
    """

    median_spacing_zyx: tuple[float, float, float]
    foreground_percentile_00_5: float
    foreground_percentile_99_5: float
    foreground_mean: float
    foreground_std: float
    median_shape_zyx: tuple[float, float, float]
    num_cases: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        values = dict(data)
        values["median_spacing_zyx"] = tuple(float(v) for v in values["median_spacing_zyx"])
        values["median_shape_zyx"] = tuple(float(v) for v in values["median_shape_zyx"])
        return cls(**values)


def compute_fingerprint(
    spec: DatasetSpec,
    label_mapping: LabelMapping | None = None,
    samples_per_case: int = 10000,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> Fingerprint:
    """The fingerprint of ``spec``'s training cases (run ``check_dataset`` first: every case must be readable).

    samples_per_case: foreground voxels drawn (with replacement) from each case; a case without foreground
        contributes no intensity samples. seed: of the sampling, so the fingerprint is reproducible.
    progress: called after each case with (cases done, number of cases, case name).

    Raises InputError when a case cannot be read, has no label map or a label map on another grid, and when no
    case has any foreground.
    """
    if not spec.cases:
        raise InputError("The dataset has no training cases: nothing to compute a fingerprint from.")
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    for index, case in enumerate(spec.cases):
        image, label = read_case(case, label_mapping)
        if label is None:
            raise InputError(f"Case {case.name} has no label map; every training case needs one (see check_dataset).")
        # The canonical order makes spacings and shapes comparable across cases stored in different orientations,
        # and lines up a label map stored with other flips (e.g. LAS) with its image, voxel for voxel.
        canonical_image, canonical_label = to_canonical(image), to_canonical(label)
        if canonical_image.GetSize() != canonical_label.GetSize():
            raise InputError(
                f"Case {case.name}: the label map is not on the image's grid; run the dataset check for details."
            )
        spacings.append(canonical_image.GetSpacing()[::-1])
        shapes.append(canonical_image.GetSize()[::-1])
        voxels = sitk.GetArrayViewFromImage(canonical_image)
        foreground = voxels[sitk.GetArrayViewFromImage(canonical_label) > 0]
        if foreground.size:
            samples.append(rng.choice(foreground, samples_per_case, replace=True).astype(np.float64))
        if progress is not None:
            progress(index + 1, len(spec.cases), case.name)
    if not samples:
        raise InputError(
            "No case has any foreground voxel (label > 0 after the label mapping): check the label maps and the "
            "label mapping."
        )
    pooled = np.concatenate(samples)
    low, high = np.percentile(pooled, [0.5, 99.5])
    return Fingerprint(
        median_spacing_zyx=tuple(float(v) for v in np.median(np.array(spacings, dtype=float), axis=0)),
        foreground_percentile_00_5=float(low),
        foreground_percentile_99_5=float(high),
        foreground_mean=float(pooled.mean()),
        foreground_std=float(pooled.std()),
        median_shape_zyx=tuple(float(v) for v in np.median(np.array(shapes, dtype=float), axis=0)),
        num_cases=len(spec.cases),
    )


def plans_from_fingerprint(
    fp: Fingerprint,
    patch_size: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    max_patch_voxels: int = CPU_MAX_PATCH_VOXELS,
) -> Plans:
    """Plans for training on a dataset with fingerprint ``fp``.

    spacing: target spacing (mm, (z, y, x)); default the median spacing (e.g. give (3, 3, 3) for the CPU model).
    patch_size: (z, y, x) voxels, each a multiple of 16 (the network's total stride) and at least 32; default:
        the median image shape at the target spacing, rounded up to multiples of 16, then reduced 16 voxels at a
        time until it holds at most ``max_patch_voxels`` voxels. As in nnU-Net, the axis reduced is the one where
        the patch is largest relative to the median shape, so the patch keeps the images' proportions.
    Intensity normalisation: clip to the foreground's 0.5th..99.5th percentile, then z-score with its mean and std.
    """
    target = tuple(float(s) for s in (spacing if spacing is not None else fp.median_spacing_zyx))
    if len(target) != 3 or any(s <= 0 for s in target):
        raise OptionError(f"spacing must be three positive millimetre values (z, y, x), got {spacing}")
    if patch_size is not None:
        patch = [int(s) for s in patch_size]
        if len(patch) != 3 or any(s % NETWORK_STRIDE or s < MIN_PATCH_AXIS for s in patch):
            raise OptionError(
                f"patch_size must be three voxel counts (z, y, x), each a multiple of {NETWORK_STRIDE} and at least "
                f"{MIN_PATCH_AXIS}, got {patch_size}"
            )
    else:
        patch = _derived_patch(fp, target, max_patch_voxels)
    # A constant foreground (std 0) would divide by zero; 1 leaves the clipped, centred intensities as they are.
    std = fp.foreground_std if fp.foreground_std > 1e-6 else 1.0
    intensity = IntensityNormalization(
        clip_low=fp.foreground_percentile_00_5,
        clip_high=fp.foreground_percentile_99_5,
        mean=fp.foreground_mean,
        std=std,
    )
    return Plans(spacing=target, patch_size=tuple(patch), intensity=intensity)


def _derived_patch(fp: Fingerprint, target: tuple[float, ...], max_patch_voxels: int) -> list[int]:
    shape = [n * s / t for n, s, t in zip(fp.median_shape_zyx, fp.median_spacing_zyx, target, strict=True)]
    patch = [max(MIN_PATCH_AXIS, math.ceil(n / NETWORK_STRIDE) * NETWORK_STRIDE) for n in shape]
    while math.prod(patch) > max_patch_voxels:
        candidates = [a for a in range(3) if patch[a] - NETWORK_STRIDE >= MIN_PATCH_AXIS]
        if not candidates:
            break  # already 32^3: the smallest patch the network takes
        axis = max(candidates, key=lambda a: (patch[a] / max(shape[a], 1.0), patch[a]))
        patch[axis] -= NETWORK_STRIDE
    return patch
