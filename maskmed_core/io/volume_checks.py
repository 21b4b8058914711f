"""Checks that an image is one 3D scalar CT volume with sane geometry: on its header before any voxel is read, and
on its voxels once read.

Everything the user can get wrong raises :class:`~maskmed_core.io.errors.InputError` with a message that says what
is wrong and what to do. :class:`ImageHeader` lets the same checks run on a header and on an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional name)

from maskmed_core.io.errors import InputError

# check_ct_intensities: a CT contains air (about -1000 HU) around and inside the body; -500 HU is far above it.
_AIR_LIMIT_HU = -500.0
_INTENSITY_SAMPLES = 1_000_000

# Header checks (before any voxel is read). Voxel spacing of a real scan lies far inside 0.01..100 mm; outside it
# the image would be resampled to a handful of voxels (or billions). Direction cosines must be orthonormal: a
# sheared or scaled matrix is not a rotation, and the canonical reorientation and the way back assume one.
SPACING_RANGE_MM = (0.01, 100.0)
ORTHONORMAL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without its voxels (``sitk.ImageFileReader.ReadImageInformation``).

    size, spacing (mm) and origin (mm, LPS) in (x, y, z) index order, direction cosines row-major, the pixel type
    and bytes per component. Has the Get* methods of ``sitk.Image`` that the memory and spacing checks use, so
    those checks run on a header before the image is read, and on an image.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_id: int
    components: int
    component_bytes: int

    @classmethod
    def of_image(cls, image: sitk.Image) -> ImageHeader:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelID(),
                   image.GetNumberOfComponentsPerPixel(), image.GetSizeOfPixelComponent())

    @classmethod
    def of_reader(cls, reader: sitk.ImageFileReader) -> ImageHeader:
        pixel_id, components = reader.GetPixelID(), reader.GetNumberOfComponents()
        return cls(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), pixel_id,
                   components, _component_bytes(pixel_id))

    @property
    def pixel_type(self) -> str:
        return sitk.GetPixelIDValueAsString(self.pixel_id)

    @property
    def voxel_bytes(self) -> int:
        """Bytes the voxels take in memory once read."""
        return math.prod(self.size) * self.components * self.component_bytes

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 (sitk.Image's name)
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self.spacing

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction

    def GetSizeOfPixelComponent(self) -> int:  # noqa: N802
        return self.component_bytes


def _component_bytes(pixel_id: int) -> int:
    name = sitk.GetPixelIDValueAsString(pixel_id)
    for bits in (8, 16, 32, 64):
        if f"{bits}-bit" in name:
            return bits // 8 * (2 if "complex" in name else 1)
    return 8


def validate_header(header: ImageHeader, name: str = "The image", memory_budget: int | None = None) -> None:
    """Raise InputError unless the header describes one 3D scalar real-valued volume with sane geometry whose
    voxels fit in ``memory_budget`` bytes (default: :func:`maskmed_core.untrusted.memory_budget_bytes`).

    Everything here is decided from the header, so a refusal costs no voxel memory: complex or multi-component
    pixels, 2D and 4D images, spacings that are not finite or outside SPACING_RANGE_MM, a direction matrix that
    is not a rotation (sheared or scaled), more voxels than the budget.
    """
    size_text = " x ".join(str(n) for n in header.size)
    if "complex" in header.pixel_type:
        raise InputError(
            f"{name} has complex-valued voxels ({header.pixel_type}, {size_text}), like MR raw or k-space data; "
            "MaskMed needs a real-valued CT volume in Hounsfield units: export the magnitude image or the original CT."
        )
    if header.components != 1:
        raise InputError(
            f"{name} has {header.components} values per voxel ({header.pixel_type}, {size_text} voxels), "
            "like a colour (RGB) image or a vector field; MaskMed needs a single-channel (grayscale) 3D CT volume "
            "in Hounsfield units: export the original CT, not a colour rendering, screenshot or derived map."
        )
    dimension = len(header.size)
    if dimension == 2 or (dimension == 3 and 1 in header.size):
        raise InputError(
            f"{name} is a 2D image ({size_text}); MaskMed needs a 3D CT volume: export the whole series, not a "
            "single slice (for DICOM, give the folder that holds all slice files of the series)."
        )
    if dimension != 3:
        raise InputError(
            f"{name} is a {dimension}D image ({size_text} voxels, e.g. a time series or several phases/channels "
            "in one file); MaskMed needs one 3D CT volume: export a single 3D volume (one phase or time point)."
        )
    low, high = SPACING_RANGE_MM
    for axis, spacing in zip("xyz", header.spacing, strict=True):
        if not (math.isfinite(spacing) and low <= spacing <= high):
            raise InputError(
                f"{name} has a voxel spacing of {spacing:g} mm along {axis} (spacing "
                f"{' x '.join(f'{v:g}' for v in header.spacing)} mm); a CT's voxels are {low:g} to {high:g} mm, so "
                "the header is damaged: fix the spacing in the header (e.g. in 3D Slicer: Volumes > Volume "
                "Information) or export the image again."
            )
    direction = np.array(header.direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or not np.allclose(
        direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOLERANCE
    ):
        raise InputError(
            f"{name} has a direction matrix that is not a rotation ({np.round(direction, 4).tolist()}: sheared or "
            "scaled axes); MaskMed needs orthonormal image axes: resample the image onto a regular grid "
            "(e.g. 3D Slicer: Resample Scalar/Vector/DWI Volume) and export it again."
        )
    check_memory_budget(header, name, memory_budget)


def check_memory_budget(header: ImageHeader, name: str, memory_budget: int | None = None) -> None:
    """Raise InputError when the header's voxels need more than ``memory_budget`` bytes (default:
    :func:`maskmed_core.untrusted.memory_budget_bytes`)."""
    from maskmed_core.untrusted import memory_budget_bytes

    budget = memory_budget_bytes() if memory_budget is None else memory_budget
    if header.voxel_bytes > budget:
        size_text = " x ".join(str(n) for n in header.size)
        raise InputError(
            f"{name} has {size_text} voxels ({header.pixel_type}): {header.voxel_bytes / 2**30:.1f} GiB to read, "
            f"more than the {budget / 2**30:.1f} GiB memory budget (the memory available; set "
            "MASKMED_MEMORY_BUDGET_MB to change it). Nothing was read: crop the volume to the region of interest "
            "or run on a machine with more memory."
        )


def validate_volume(image: sitk.Image, name: str = "The image") -> None:
    """Raise InputError unless ``image`` is one 3D scalar volume with finite, non-constant voxels.

    name: how messages refer to the image (a path, or "the DICOM series … in …"). A 3D image with a size-1 axis
    counts as 2D (a single slice). The geometry and pixel type are checked as :func:`validate_header` does (no
    memory budget here: the image is already in memory). SimpleITK's NIfTI reader replaces NaN and infinite float
    voxels by 0, so :func:`read_image` checks a NIfTI file's stored values itself before this runs.
    """
    size_text = " x ".join(str(n) for n in image.GetSize())
    validate_header(ImageHeader.of_image(image), name, memory_budget=2**63)
    voxels = sitk.GetArrayViewFromImage(image)
    # min/max are single passes without a temporary array; NaN propagates into both, +-inf shows up in one.
    low, high = voxels.min(), voxels.max()
    if np.issubdtype(voxels.dtype, np.floating):
        if np.isnan(low) or np.isnan(high):
            count = int(np.count_nonzero(np.isnan(voxels)))
            raise InputError(
                f"{name} contains {count} NaN (not-a-number) voxels of {voxels.size}; MaskMed needs finite "
                "intensities: fill the undefined region (e.g. with -1024 HU, air) or crop it away, and export again."
            )
        if np.isinf(low) or np.isinf(high):
            count = int(np.count_nonzero(np.isinf(voxels)))
            raise InputError(
                f"{name} contains {count} infinite voxels of {voxels.size}; MaskMed needs finite intensities: "
                "fill the invalid region (e.g. with -1024 HU, air) or crop it away, and export again."
            )
    if low == high:
        raise InputError(
            f"{name} is constant: all {voxels.size} voxels ({size_text}) equal {low.item():g}, so it holds no "
            "image; check that the right volume was exported (not an empty or blanked one)."
        )


def check_ct_intensities(image: sitk.Image) -> str | None:
    """A warning text when the intensities do not look like CT in Hounsfield units, else None.

    A CT always holds air (about -1000 HU) around or inside the body, so the 0.5th percentile of its voxels lies
    far below -500 HU. MR, PET, normalised (0..1) images and CT stored without the DICOM rescale intercept do not.
    The percentiles come from a strided sample of about one million voxels, so this stays cheap for any size.
    """
    voxels = sitk.GetArrayViewFromImage(image).reshape(-1)
    step = max(1, voxels.size // _INTENSITY_SAMPLES)
    low, high = (float(v) for v in np.percentile(voxels[::step], [0.5, 99.5]))
    if low <= _AIR_LIMIT_HU:
        return None
    minimum, maximum = float(voxels.min()), float(voxels.max())
    if minimum >= 0 and maximum > 1500:
        hint = (
            "it may be a CT stored without the DICOM rescale intercept (HU = stored value - 1024): export it "
            "in Hounsfield units"
        )
    elif maximum - minimum <= 10:
        hint = "it looks normalised (e.g. to 0..1): give the original CT in Hounsfield units"
    else:
        hint = "it may be an MR, PET or other non-CT image, or a CT cropped so tightly that it holds no air"
    return (
        f"The image intensities do not look like CT in Hounsfield units: they range from {minimum:g} to "
        f"{maximum:g} (0.5th..99.5th percentile {low:g} .. {high:g}), but a CT reaches about -1000 HU in air; "
        f"{hint}. MaskMed expects CT in HU, so its segmentation of this image is likely to be wrong."
    )
