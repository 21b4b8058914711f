"""From an input image to the network's grid, and label maps back onto the input's exact grid.

Steps: reorient to the canonical axis order (permute/flip only), resample to the plans' spacing
(SimpleITK, linear), normalise CT intensities. The way back is ``SegmentationResult.to_input_grid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskmed_core.io.orientation import to_canonical
from maskmed_core.plans import IntensityNormalization, Plans


@dataclass
class PreparedVolume:
    """The network's view of one input.

    ``array``: (z, y, x) float32 normalised intensities on ``model_grid``; ``model_grid``: an empty
    SimpleITK image carrying that grid's geometry (spacing = plans.spacing, mm); ``canonical``: the
    input reoriented (its grid is where label maps are resampled back to); ``reference``: the input.
    """

    array: np.ndarray
    model_grid: object
    canonical: object
    reference: object


def normalize_ct(array: np.ndarray, intensity: IntensityNormalization) -> np.ndarray:
    """Clip to [clip_low, clip_high] HU, then (x - mean) / std; float32, in place where possible."""
    out = np.clip(array.astype(np.float32, copy=False), intensity.clip_low, intensity.clip_high)
    out -= np.float32(intensity.mean)
    out /= np.float32(intensity.std)
    return out


def model_grid_for(canonical, spacing_zyx: tuple[float, float, float]):
    """An empty image whose grid covers the same physical box as ``canonical`` at ``spacing_zyx`` (mm).

    Sizes are rounded (at least 1 voxel); the grid is centred on the input's box so both have the same
    centre and direction.
    """
    import SimpleITK as sitk  # noqa: N813

    old_spacing = np.array(canonical.GetSpacing(), dtype=float)  # (x, y, z)
    old_size = np.array(canonical.GetSize(), dtype=float)
    new_spacing = np.array(spacing_zyx[::-1], dtype=float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    direction = np.array(canonical.GetDirection(), dtype=float).reshape(3, 3)
    # Index -0.5 is the box's lower face; keep the box centre fixed.
    centre_index = (old_size - 1) / 2.0
    centre = np.array(canonical.GetOrigin()) + direction @ (centre_index * old_spacing)
    new_origin = centre - direction @ (((new_size - 1) / 2.0) * new_spacing)
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(new_spacing))
    grid.SetOrigin(tuple(new_origin))
    grid.SetDirection(canonical.GetDirection())
    return grid


def prepare(image, plans: Plans) -> PreparedVolume:
    """Reorient, resample (linear) and normalise an input CT for the network."""
    import SimpleITK as sitk  # noqa: N813

    canonical = to_canonical(image)
    grid = model_grid_for(canonical, plans.spacing)
    source = sitk.Cast(canonical, sitk.sitkFloat32)
    if grid.GetSize() == canonical.GetSize() and np.allclose(grid.GetSpacing(), canonical.GetSpacing()):
        resampled = source
    else:
        fill = float(plans.intensity.clip_low)  # outside the input is air, not zero HU
        resampled = sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
    array = normalize_ct(sitk.GetArrayFromImage(resampled), plans.intensity)
    return PreparedVolume(array=array, model_grid=grid, canonical=canonical, reference=image)
