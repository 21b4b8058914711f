"""The dataset fingerprint (spacings, shapes, foreground intensities) and the plans derived from it, as nnU-Net does.

The fingerprint is measured from the training cases by :func:`maskmed_core.training.fingerprint.compute_fingerprint`
(reading labelled cases is the training data's job); here it becomes plans: the target spacing, a patch that keeps
the images' proportions, and the CT intensity normalisation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from maskmed_core.plans.preprocessing_plans import IntensityNormalization, Plans

# The total stride of the `small` network (four 2x downsamplings): every patch axis must be a multiple of it.
NETWORK_STRIDE = 16
MIN_PATCH_AXIS = 32
# About what a CPU trains on in reasonable time and memory: 96 x 96 x 96 voxels.
CPU_MAX_PATCH_VOXELS = 96**3


class PlanOptionError(ValueError):
    """A target spacing or patch size the plans cannot take (``maskmed train --spacing/--patch-size``: a usage
    error, ExitCode.USAGE)."""


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
        raise PlanOptionError(f"spacing must be three positive millimetre values (z, y, x), got {spacing}")
    if patch_size is not None:
        patch = [int(s) for s in patch_size]
        if len(patch) != 3 or any(s % NETWORK_STRIDE or s < MIN_PATCH_AXIS for s in patch):
            raise PlanOptionError(
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
    return Plans(spacing=target, patch_size=(patch[0], patch[1], patch[2]), intensity=intensity)


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
