"""NIfTI files whose sform is a rotation only up to float32 rounding: ITK refuses them; they are read here.

A NIfTI file without a qform (qform_code 0) places its voxels by the sform alone, a 3 x 4 float32 matrix. Written from
an oblique scan, its rotation part is orthonormal only to about 1e-4 (float32 rounding of products), and ITK's NIfTI
reader refuses it ("ITK only supports orthonormal direction cosines"); TotalSegmentator's s0002 CT is such a file.
ITK's permissive mode (environment variable ``ITK_NIFTI_SFORM_PERMISSIVE``) reads the voxels but returns the
TRANSPOSED rotation for it (measured on s0002: its own label map, which has a qform-free sform that ITK accepts, comes
back with the transpose of the CT's direction), so only the voxels are taken from ITK and the geometry from the sform:
spacing = its column lengths, direction = the nearest rotation (polar decomposition), origin = its translation, all
turned from NIfTI's RAS into ITK's LPS. An sform that is sheared or scaled beyond rounding is still refused.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional name)

PERMISSIVE_VARIABLE = "ITK_NIFTI_SFORM_PERMISSIVE"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# One permissive block at a time: two interleaved blocks would each restore what the other set (the second saves
# "1" as the value to restore and leaves the variable set for the rest of the process).
_PERMISSIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class SformGeometry:
    """Where the voxels of a NIfTI file lie, as ITK would give it: (x, y, z) order, mm, LPS, direction row-major."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def sform_geometry(
    qform_code: int, sform_code: int, srow: tuple[float, ...], tolerance: float
) -> SformGeometry | None:
    """The geometry of a NIfTI header that ITK refuses only for rounding, or None.

    ``srow``: the sform's 12 numbers (srow_x, srow_y, srow_z; mm, RAS). None unless the qform is unset (qform_code 0;
    ITK would use a set one), the sform is set (sform_code > 0) and its axes, each scaled to unit length, are
    orthonormal to within ``tolerance`` (the largest entry of D^T D - I).
    """
    if qform_code != 0 or sform_code <= 0:
        return None
    affine = np.array(srow, dtype=float).reshape(3, 4)
    if not np.all(np.isfinite(affine)):
        return None
    axes = _RAS_TO_LPS @ affine[:, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        return None
    unit = axes / spacing
    if np.abs(unit.T @ unit - np.eye(3)).max() > tolerance:
        return None
    left, _, right = np.linalg.svd(unit)
    rotation = left @ right
    origin = _RAS_TO_LPS @ affine[:, 3]
    return SformGeometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),  # type: ignore[arg-type]
                         tuple(float(v) for v in rotation.ravel()))


@contextlib.contextmanager
def itk_permissive_sform() -> Iterator[None]:
    """ITK's NIfTI reader accepts a non-orthonormal sform inside this block, without printing its warning about it
    (the variable and the warning display are restored after).

    The variable and the switch are process-wide: blocks in several threads run one after another (a lock), but a
    plain read in another thread during a block is permissive too. The CLI and the Slicer module read one file at a
    time.
    """
    with _PERMISSIVE_LOCK:
        previous = os.environ.get(PERMISSIVE_VARIABLE)
        warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        os.environ[PERMISSIVE_VARIABLE] = "1"
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
            if previous is None:
                del os.environ[PERMISSIVE_VARIABLE]
            else:
                os.environ[PERMISSIVE_VARIABLE] = previous
