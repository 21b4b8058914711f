"""One axis order for everything inside maskmed_core, and the exact way back to the user's grid.

Inside maskmed_core every volume is on its *canonical grid*: the image reoriented, by permuting and flipping
its axes only (never interpolating), to the orientation closest to LPS. ``sitk.GetArrayFromImage`` of a
canonical image is an array indexed (z, y, x) with

- z: inferior -> superior,
- y: anterior -> posterior,
- x: right -> left (patient's right to patient's left),

and its spacing in that order is :func:`spacing_zyx` (mm). SimpleITK's own indices, sizes and spacings stay in
(x, y, z) order. For an axis-aligned image the canonical direction is the identity; an oblique image stays
oblique (only the closest permutation/flip is applied), so its axes are only approximately L, P, S.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional name)

CANONICAL_ORIENTATION = "LPS"

# from_canonical: how far the image given may be from the reference's canonical grid. Loose enough for geometry
# that went through float32 storage (NIfTI), tight enough to catch an image of another grid.
_DIRECTION_TOLERANCE = 1e-4
_SPACING_RELATIVE_TOLERANCE = 1e-4
_ORIGIN_TOLERANCE_VOXELS = 0.01


def orientation_code(image: sitk.Image) -> str:
    """Three letters (DICOM/ITK convention, e.g. "LPS", "RAS"): the direction each index axis x, y, z points to,
    for the closest axis-aligned orientation."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel spacing in mm in numpy array order (z, y, x), i.e. ``image.GetSpacing()`` reversed."""
    _require_3d(image, "image")
    x, y, z = image.GetSpacing()
    return (z, y, x)


def to_canonical(image: sitk.Image) -> sitk.Image:
    """The same voxels on the canonical grid (closest to LPS), by axis permutation and flips only.

    Every voxel keeps its value and its physical position (mm): origin, spacing and direction are updated with
    the permutation. Returns a new image (a cheap copy-on-write one when ``image`` is already canonical).
    Works for any scalar pixel type (CT intensities, label maps, probabilities).
    """
    _require_3d(image, "image")
    if orientation_code(image) == CANONICAL_ORIENTATION:
        return sitk.Image(image)
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def from_canonical(canonical_result: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Put an image that lies on the canonical grid of ``reference`` back on ``reference``'s own grid.

    canonical_result: e.g. a label map or probability map computed on ``to_canonical(reference)``; its geometry
    must be that of ``to_canonical(reference)`` (within float32 rounding).
    reference: the image as read from the user's file.

    The inverse permutation/flip is applied (no interpolation), then size, spacing, origin and direction are
    copied from ``reference`` so that they are bit-identical to it, whatever rounding the reorientation did.
    The pixel type of ``canonical_result`` is kept. Raises ValueError when ``canonical_result`` is not on the
    canonical grid of ``reference`` (another size, spacing, origin or direction).
    """
    _require_3d(canonical_result, "canonical_result")
    _require_3d(reference, "reference")
    target = orientation_code(reference)
    if orientation_code(canonical_result) == target:
        result = sitk.Image(canonical_result)
    else:
        result = sitk.DICOMOrient(canonical_result, target)
    problem = _grid_mismatch(result, reference)
    if problem:
        raise ValueError(
            f"from_canonical: the image is not on the canonical grid of the reference: reoriented to {target} "
            f"{problem}. Pass an image with the geometry of to_canonical(reference) (e.g. build it from an "
            "array and CopyInformation from the canonical image)."
        )
    result.CopyInformation(reference)
    return result


def _require_3d(image: sitk.Image, what: str) -> None:
    if not isinstance(image, sitk.Image):
        raise TypeError(f"{what} must be a SimpleITK.Image, not {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(f"{what} must be a 3D image, not {image.GetDimension()}D")


def _grid_mismatch(image: sitk.Image, reference: sitk.Image) -> str | None:
    """How ``image``'s grid differs from ``reference``'s beyond rounding, or None when they agree."""
    if image.GetSize() != reference.GetSize():
        return f"its size is {image.GetSize()} but the reference's is {reference.GetSize()} (x, y, z voxels)"
    spacing, reference_spacing = np.array(image.GetSpacing()), np.array(reference.GetSpacing())
    if not np.allclose(spacing, reference_spacing, rtol=_SPACING_RELATIVE_TOLERANCE, atol=0):
        return f"its spacing is {image.GetSpacing()} mm but the reference's is {reference.GetSpacing()} mm"
    if not np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=_DIRECTION_TOLERANCE):
        return f"its direction is {image.GetDirection()} but the reference's is {reference.GetDirection()}"
    distance = float(np.linalg.norm(np.subtract(image.GetOrigin(), reference.GetOrigin())))
    if distance > _ORIGIN_TOLERANCE_VOXELS * reference_spacing.min():
        return (
            f"its origin is {distance:.4g} mm away from the reference's "
            f"({image.GetOrigin()} vs {reference.GetOrigin()})"
        )
    return None
