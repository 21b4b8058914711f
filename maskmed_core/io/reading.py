"""Reading a CT volume: NIfTI, NRRD and MetaImage files, and DICOM series folders.

Everything the user can get wrong (a missing path, a damaged file, a single slice, a colour image, NaN voxels…)
raises :class:`~maskmed_core.io.errors.InputError` with a message that says what is wrong and what to do.
The image comes back as SimpleITK gives it: its own pixel type, its own orientation (oblique direction cosines
included) and (x, y, z) index order; :func:`maskmed_core.io.orientation.to_canonical` makes the axis order uniform.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import math
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional name)

from maskmed_core.io.errors import InputError
from maskmed_core.io.nifti_sform import SformGeometry, itk_permissive_sform, sform_geometry

# File name endings read as one volume (lower case; ".nii.gz" is matched before any single suffix).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# A single DICOM file is read too, only so that the user hears "2D image: give the whole series".
DICOM_FILE_SUFFIXES = (".dcm", ".ima")
_FORMATS = (
    "a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, "
    "or a folder that holds one DICOM series"
)
_REEXPORT = "Re-export the image, or copy it again if a download or transfer was interrupted."

# check_ct_intensities: a CT contains air (about -1000 HU) around and inside the body; -500 HU is far above it.
_AIR_LIMIT_HU = -500.0
_INTENSITY_SAMPLES = 1_000_000


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a folder, as GDCM groups the files.

    uid: Series Instance UID (0020,000E); "" when anonymisation removed it (GDCM then groups those files as one).
    num_files: number of files (usually slices) in the series.
    description: Series Description (0008,103E) of its first file, "" when absent or unreadable.
    files: the file paths in GDCM's order (sorted by slice position), as accepted by ``sitk.ImageSeriesReader``.
    """

    uid: str
    num_files: int
    description: str
    files: tuple[str, ...]

    def summary(self) -> str:
        """One line for messages: UID, file count and description."""
        uid = f"'{self.uid}'" if self.uid else "'' (the files carry no Series Instance UID)"
        description = f', "{self.description}"' if self.description else ""
        return f"{uid}: {self.num_files} files{description}"


# Header checks (before any voxel is read). Voxel spacing of a real scan lies far inside 0.01..100 mm; outside it
# the image would be resampled to a handful of voxels (or billions). Direction cosines must be orthonormal: a
# sheared or scaled matrix is not a rotation, and the canonical reorientation and the way back assume one.
SPACING_RANGE_MM = (0.01, 100.0)
_ORTHONORMAL_TOLERANCE = 1e-3
# DICOM slice positions: gaps may differ from the typical one by this fraction before the series is refused.
SLICE_GAP_TOLERANCE = 0.1


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


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """The header of one image file, no voxels read. Raises InputError when it cannot be parsed."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        _, geometry = read_tolerating_sform_rounding(Path(path), reader.ReadImageInformation)
    except RuntimeError as error:
        raise _unreadable(Path(path), error) from error
    header = ImageHeader.of_reader(reader)
    if geometry is None:
        return header
    return dataclasses.replace(header, spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction)


T = TypeVar("T")


def read_tolerating_sform_rounding(path: Path, read: Callable[[], T]) -> tuple[T, SformGeometry | None]:
    """(``read()``, None) for ``read``, an ITK read of ``path``. For a NIfTI file whose sform ITK refuses only for
    float rounding (:mod:`maskmed_core.io.nifti_sform`): (``read()`` in ITK's permissive mode, the geometry to put on
    what it read). InputError for a sform that is sheared or scaled; ITK's other errors (RuntimeError) pass through
    for the caller to word."""
    try:
        return read(), None
    except RuntimeError as error:
        if "orthonormal" not in str(error) or _suffix(path) not in (".nii", ".nii.gz"):
            raise
        header, _ = _read_nifti_header(path)
        geometry = None if header is None else sform_geometry(
            header.qform_code, header.sform_code, header.srow, _ORTHONORMAL_TOLERANCE
        )
        if geometry is None:
            raise InputError(
                f"{path} places its voxels by a NIfTI sform that is not a rotation (sheared or scaled axes) and has no "
                "qform; MaskMed needs orthonormal image axes: resample the image onto a regular grid (e.g. 3D Slicer: "
                "Resample Scalar/Vector/DWI Volume) and export it again."
            ) from error
    with itk_permissive_sform():
        return read(), geometry


def _unreadable(path: Path, error: RuntimeError) -> InputError:
    return InputError(
        f"{path} could not be read: the file looks corrupted or truncated, or is not really a "
        f"{_suffix(path)} file (SimpleITK: {sitk_error_reason(error)}). {_REEXPORT}"
    )


def validate_header(header: ImageHeader, name: str = "The image", memory_budget: int | None = None) -> None:
    """Raise InputError unless the header describes one 3D scalar real-valued volume with sane geometry whose
    voxels fit in ``memory_budget`` bytes (default: :func:`maskmed_core.untrusted.memory_budget_bytes`).

    Everything here is decided from the header, so a refusal costs no voxel memory: complex or multi-component
    pixels, 2D and 4D images, spacings that are not finite or outside SPACING_RANGE_MM, a direction matrix that
    is not a rotation (sheared or scaled), more voxels than the budget.
    """
    from maskmed_core.untrusted import memory_budget_bytes

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
        direction.T @ direction, np.eye(3), atol=_ORTHONORMAL_TOLERANCE
    ):
        raise InputError(
            f"{name} has a direction matrix that is not a rotation ({np.round(direction, 4).tolist()}: sheared or "
            "scaled axes); MaskMed needs orthonormal image axes: resample the image onto a regular grid "
            "(e.g. 3D Slicer: Resample Scalar/Vector/DWI Volume) and export it again."
        )
    budget = memory_budget_bytes() if memory_budget is None else memory_budget
    if header.voxel_bytes > budget:
        raise InputError(
            f"{name} has {size_text} voxels ({header.pixel_type}): {header.voxel_bytes / 2**30:.1f} GiB to read, "
            f"more than the {budget / 2**30:.1f} GiB memory budget (the memory available; set "
            "MASKMED_MEMORY_BUDGET_MB to change it). Nothing was read: crop the volume to the region of interest "
            "or run on a machine with more memory."
        )


def list_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """The DICOM series directly inside ``folder`` (sub-folders are not searched), most files first.

    An empty list when the folder holds no DICOM files. Raises InputError when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give the folder that holds the DICOM files of the series.")
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if files:
            series.append(DicomSeries(uid, len(files), _series_description(files[0]), files))
    series.sort(key=lambda s: (-s.num_files, s.uid))
    return series


def read_image(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    memory_budget: int | None = None,
    check_header: Callable[[ImageHeader, str], None] | None = None,
) -> sitk.Image:
    """Read and check one 3D single-channel volume.

    path: a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file, or a folder holding a DICOM series. In a folder with several
    series the one with the most files is read, unless ``series_uid`` names one (see :func:`list_dicom_series`).

    Returns the image with SimpleITK's geometry untouched: spacing in mm, origin in mm (LPS world coordinates),
    direction cosines as stored (oblique ones kept), index order (x, y, z). DICOM pixel values are rescaled by
    ITK (Rescale Slope/Intercept), so a CT comes back in Hounsfield units.

    Raises InputError for a missing path, a folder without DICOM series, an unknown ``series_uid``, an unreadable
    or truncated file, and an image that is not one 3D scalar volume with finite, non-constant intensities.
    The header is checked first (:func:`validate_header`, against ``memory_budget`` bytes, then
    ``check_header(header, name)`` when given, e.g. the predictor's spacing and memory checks), so a refused image
    costs no voxel memory; a DICOM series' slice positions are checked before its pixels are read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist: check the path. MaskMed reads {_FORMATS}.")
    if path.is_dir():
        image, name = _read_dicom_folder(path, series_uid, memory_budget, check_header)
    else:
        if series_uid is not None:
            raise InputError(
                f"A DICOM series UID ('{series_uid}') was given, but {path} is a file, not a DICOM folder: "
                "give the folder that holds the series, or leave the series UID out."
            )
        image, name = _read_file(path, memory_budget, check_header), str(path)
    validate_volume(image, name)
    return image


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


# --------------------------------------------------------------------------------------------------------------
# files


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES + DICOM_FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _read_file(
    path: Path, memory_budget: int | None, check_header: Callable[[ImageHeader, str], None] | None
) -> sitk.Image:
    suffix = _suffix(path)
    if suffix not in VOLUME_SUFFIXES + DICOM_FILE_SUFFIXES:
        raise InputError(
            f"{path} has an unsupported file type ({suffix or 'no extension'}): MaskMed reads {_FORMATS}. "
            "Convert it (e.g. in 3D Slicer: Save, as .nii.gz); for DICOM, give the folder that holds the series."
        )
    nifti = suffix in (".nii", ".nii.gz")
    if nifti:
        _check_nifti_header(path)  # before SimpleITK, which turns a 0 or NaN pixdim into 1 mm without a word
    header = read_header(path)
    validate_header(header, str(path), memory_budget)
    if check_header is not None:
        check_header(header, str(path))
    try:
        image, geometry = read_tolerating_sform_rounding(path, lambda: sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise _unreadable(path, error) from error
    if geometry is not None:
        geometry.apply(image)
    if nifti:
        _check_nifti_complete(path)
        _check_nifti_finite(path)
    return image


def sitk_error_reason(error: RuntimeError) -> str:
    """The informative part of a SimpleITK exception text (its first line is only the C++ source location)."""
    lines = [line.strip() for line in str(error).splitlines()[1:]]
    # MetaImage reports a truncated file with a stale errno text ("No such file or directory"): drop it, the file
    # exists (read_image checked).
    lines = [line for line in lines if line and line != "Reason: No such file or directory"]
    text = "; ".join(re.sub(r"^(sitk::ERROR:|ITK ERROR: \w+\(0x[0-9a-f]+\):)\s*", "", line) for line in lines)
    return text[:300] or str(error).strip()[:300]


def _check_nifti_complete(path: Path) -> None:
    """Raise InputError when a NIfTI file holds less voxel data than its header announces.

    SimpleITK (ITK's niftilib) reads a truncated .nii or .nii.gz without any error and fills the missing voxels
    with zeros, so this is checked here: the header gives vox_offset + voxel bytes; an uncompressed file must be
    that long, and a gzip file must decompress to that many bytes.
    """
    read = _nifti_header_bytes(path)
    if read is None:
        return  # SimpleITK read it, so it is at least not a header problem we can judge here
    header, compressed = read
    expected = _nifti_expected_bytes(header)
    if expected is None:
        return
    if not compressed:
        actual, complete = path.stat().st_size, True
    else:
        # The gzip trailer ends with the uncompressed size mod 2**32 (ISIZE): one 4-byte read for an intact file.
        # A truncated file ends in compressed data instead, which matches the expected size only by a 2**-32 chance.
        with open(path, "rb") as file:
            file.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", file.read(4))
        if isize == expected % 2**32:
            return
        # Mismatch: several gzip members, trailing bytes, or truncation; decompress to find out.
        actual, complete = _gzip_stream_size(path)
    if complete and actual >= expected:
        return
    raise InputError(
        f"{path} is truncated: its NIfTI header announces {expected:,} bytes, but the file holds only "
        f"{actual:,}{' after decompression' if compressed else ''} (SimpleITK would fill the missing voxels with "
        f"zeros). The file looks corrupted or truncated. {_REEXPORT}"
    )


@dataclass(frozen=True)
class _NiftiHeader:
    """The fields of a single-file NIfTI-1/2 header that the checks below need (byte order "<" or ">")."""

    order: str
    dims: tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    bitpix: int
    vox_offset: int
    pixdim: tuple[float, ...]  # pixdim[1..dim[0]]
    qform_code: int
    sform_code: int
    srow: tuple[float, ...]  # srow_x, srow_y, srow_z (3 x 4, row-major, mm, RAS)

    @property
    def data_bytes(self) -> int:
        return math.prod(self.dims) * self.bitpix // 8


# NIfTI datatype codes of real floating-point voxels (the ones that can hold NaN or Inf), as numpy types.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _parse_nifti_header(header: bytes) -> _NiftiHeader | None:
    """The header fields of a single-file NIfTI-1 or NIfTI-2 file, or None when they cannot be judged."""
    if len(header) < 348:
        return None
    for order in "<>":
        (sizeof_hdr,) = struct.unpack_from(order + "i", header, 0)
        if sizeof_hdr == 348 and header[344:348] == b"n+1\0":
            dims = struct.unpack_from(order + "8h", header, 40)
            datatype, bitpix = struct.unpack_from(order + "hh", header, 70)
            pixdim = struct.unpack_from(order + "8f", header, 76)
            (vox_offset,) = struct.unpack_from(order + "f", header, 108)
            codes = struct.unpack_from(order + "hh", header, 252)
            srow = struct.unpack_from(order + "12f", header, 280)
        elif sizeof_hdr == 540 and len(header) >= 540 and header[4:8] == b"n+2\0":
            datatype, bitpix = struct.unpack_from(order + "hh", header, 12)
            dims = struct.unpack_from(order + "8q", header, 16)
            pixdim = struct.unpack_from(order + "8d", header, 104)
            (vox_offset,) = struct.unpack_from(order + "q", header, 168)
            codes = struct.unpack_from(order + "ii", header, 344)
            srow = struct.unpack_from(order + "12d", header, 400)
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or not math.isfinite(vox_offset) or vox_offset < 0:
            return None
        lengths = tuple(int(n) for n in dims[1 : dims[0] + 1])
        if min(lengths) < 1:
            return None
        return _NiftiHeader(order, lengths, int(datatype), int(bitpix), int(vox_offset), pixdim[1 : dims[0] + 1],
                            int(codes[0]), int(codes[1]), tuple(srow))
    return None


def _nifti_orientation(header: bytes) -> tuple[float, ...] | None:
    """quatern_b/c/d, qoffset_x/y/z and the srow rows of a NIfTI-1/2 header in the byte order its sizeof_hdr
    gives, or None when sizeof_hdr is neither 348 nor 540 or dim[0] is not 1..7 in that order (niftilib would then
    guess the byte order from other fields, so these checks could not know which values it reads)."""
    for order in "<>":
        (size,) = struct.unpack_from(order + "i", header, 0)
        if size == 348 and 1 <= struct.unpack_from(order + "h", header, 40)[0] <= 7:
            return struct.unpack_from(order + "18f", header, 256)
        if size == 540 and len(header) >= 540 and 1 <= struct.unpack_from(order + "q", header, 16)[0] <= 7:
            return struct.unpack_from(order + "18d", header, 352)
    return None


def _read_nifti_header(path: Path) -> tuple[_NiftiHeader | None, bool]:
    """(the parsed header or None, whether the file is gzip-compressed); reads at most 540 bytes of header."""
    with open(path, "rb") as file:
        compressed = file.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as file:
            return _parse_nifti_header(file.read(540)), compressed
    except (OSError, EOFError, zlib.error):
        return None, compressed


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes of a single-file NIfTI-1 or NIfTI-2 header, or None when that cannot be judged."""
    parsed = _parse_nifti_header(header)
    return None if parsed is None else parsed.vox_offset + parsed.data_bytes


def _nifti_header_bytes(path: Path) -> tuple[bytes, bool] | None:
    """(the first 540 bytes of a .nii or .nii.gz file, decompressed; whether it is gzip), or None when they cannot
    be read."""
    with open(path, "rb") as file:
        compressed = file.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as file:
            return file.read(540), compressed
    except (OSError, EOFError, zlib.error):
        return None


def _check_nifti_header(path: Path) -> None:
    """Raise InputError for a voxel size (pixdim) that is 0, negative or not a number.

    ITK reads such a header as 1 mm without a warning, which would segment the image at a made-up scale.
    """
    read = _nifti_header_bytes(path)
    if read is None:
        return  # ITK will say the file cannot be read
    raw = read[0]
    if len(raw) < 348:
        return  # ITK says the file is too short to read
    orientation = _nifti_orientation(raw)
    if orientation is None:
        raise InputError(
            f"{path} does not start with a valid NIfTI header (its header size or number of dimensions is "
            "damaged); ITK could misread it. Export the image again."
        )
    parsed = _parse_nifti_header(raw)
    # ITK's header reader does not return on some absurd orientations (an infinite srow entry, a quaternion
    # component of 1e30): refuse them first. A quaternion's b, c, d are at most 1 (a unit quaternion); offsets and
    # affine entries are millimetres within a scanner's reach.
    quaternion, rest = orientation[:3], orientation[3:]
    if not (all(math.isfinite(v) for v in orientation) and all(abs(v) <= 1.01 for v in quaternion)
            and all(abs(v) <= 1e7 for v in rest)):
        raise InputError(
            f"{path} has a NIfTI header whose orientation (qform/sform) holds impossible values (infinite, not a "
            "number, or beyond any scanner's range): the header is damaged. Export the image again."
        )
    if parsed is None:
        return
    for axis, value in zip("xyz", parsed.pixdim[:3], strict=False):
        if not (math.isfinite(value) and value > 0):
            raise InputError(
                f"{path} has a voxel size (pixdim) of {value:g} mm along {axis} in its NIfTI header; it must be a "
                "positive number of millimetres (ITK would silently use 1 mm). The header is damaged: fix the "
                "voxel size or export the image again."
            )


def _check_nifti_finite(path: Path) -> None:
    """Raise InputError when a floating-point NIfTI holds NaN or infinite voxels.

    ITK's NIfTI reader replaces them by 0 without a word (0 HU: water, so they would be segmented as tissue), so
    the stored values are streamed here, 16 MiB at a time (bounded memory at any size and compression).
    """
    parsed, compressed = _read_nifti_header(path)
    if parsed is None or parsed.datatype not in _NIFTI_FLOAT_TYPES:
        return
    dtype = np.dtype(parsed.order + _NIFTI_FLOAT_TYPES[parsed.datatype])
    remaining = parsed.data_bytes
    nan = infinite = 0
    chunk_bytes = (1 << 24) // dtype.itemsize * dtype.itemsize
    with gzip.open(path, "rb") if compressed else open(path, "rb") as file:
        file.seek(parsed.vox_offset)
        while remaining > 0:
            chunk = file.read(min(chunk_bytes, remaining))
            if not chunk:
                break
            values = np.frombuffer(chunk[: len(chunk) // dtype.itemsize * dtype.itemsize], dtype=dtype)
            nan += int(np.count_nonzero(np.isnan(values)))
            infinite += int(np.count_nonzero(np.isinf(values)))
            remaining -= len(chunk)
    if nan or infinite:
        found = " and ".join(t for t in (f"{nan} NaN (not-a-number)" if nan else "",
                                          f"{infinite} infinite" if infinite else "") if t)
        raise InputError(
            f"{path} contains {found} voxels of {math.prod(parsed.dims)}; MaskMed needs finite intensities: fill "
            "the undefined region (e.g. with -1024 HU, air) or crop it away, and export again."
        )


def _gzip_stream_size(path: Path) -> tuple[int, bool]:
    """(decompressed bytes, whether the data ends with a complete gzip member) of a possibly multi-member file.

    Streams 1 MiB of input at a time and caps each output piece at 16 MiB, so memory stays small at any
    compression ratio. wbits=31 makes zlib parse the gzip header and check its CRC-32/size trailer.
    """
    total = 0
    members_done = 0
    decompressor = zlib.decompressobj(wbits=31)
    in_member = False
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            data = chunk
            while True:
                try:
                    out = decompressor.decompress(data, 1 << 24)
                except zlib.error:
                    # Bytes after a complete member that are not gzip (e.g. zero padding) are ignored, as zlib's own
                    # gzread does; an error inside the first member means the data is corrupt.
                    return total, members_done > 0 and not in_member
                in_member = True
                total += len(out)
                if decompressor.eof:
                    members_done += 1
                    in_member = False
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                    if not data:
                        break
                    continue
                data = decompressor.unconsumed_tail
                if not data and len(out) < 1 << 24:
                    break
    return total, members_done > 0 and not in_member


# --------------------------------------------------------------------------------------------------------------
# DICOM


def _series_description(file: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()  # header only: no pixel data is decoded
    except RuntimeError:
        return ""
    key = "0008|103e"
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _check_links(folder: Path) -> None:
    """Raise InputError for links in the folder that lead nowhere (dangling) or to themselves (a loop).

    GDCM skips such entries without a word, so a series with one broken link would be read with a slice
    missing.
    """
    broken = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_symlink():
            continue
        try:
            entry.stat()
        except OSError as error:  # ENOENT: dangling; ELOOP: a loop
            broken.append(f"{entry.name} ({'a link loop' if error.errno == errno.ELOOP else 'leads nowhere'})")
    if broken:
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        raise InputError(
            f"{folder} holds links that cannot be followed: {shown}. A DICOM reader would skip them and build the "
            "volume from the remaining slices; copy the real files into the folder or remove the broken links."
        )


def _slice_geometry(series: DicomSeries, name: str) -> ImageHeader:
    """Check the slice positions of a DICOM series from its headers (no pixel data) and return its header.

    Each file's Image Position (Patient) is projected on the slice normal (from Image Orientation (Patient));
    the positions must be distinct and evenly spaced within SLICE_GAP_TOLERANCE, else InputError names the gap:
    ITK would put the slices on a uniform grid and shift every organ beyond a missing slice.
    """
    positions = []
    orientation = None
    first = None
    for file in series.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            reason = sitk_error_reason(error)
            raise InputError(f"{name}: the file {file} cannot be read ({reason}). {_REEXPORT}") from error
        first = first or reader
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            raise InputError(
                f"{name}: the file {Path(file).name} has no slice position or orientation (Image Position/"
                "Orientation (Patient)), so the slices cannot be placed; export the series again from the scanner "
                "or PACS."
            )
        try:
            position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            if orientation is None:
                orientation = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
        except ValueError:
            position = np.array([])
        readable = position.shape == (3,) and orientation is not None and orientation.shape == (6,)
        if not readable or not np.isfinite(position).all():
            raise InputError(f"{name}: the file {Path(file).name} has an unreadable slice position. {_REEXPORT}")
        positions.append(position)
    assert first is not None
    header = ImageHeader.of_reader(first)
    if len(positions) < 2:
        return header
    assert orientation is not None  # every file's was read above, or it raised
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array([p @ normal for p in positions])
    order = np.argsort(along)
    along = along[order]
    files = [Path(series.files[i]).name for i in order]
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    duplicates = [i for i, gap in enumerate(gaps) if gap <= 1e-3 * max(typical, 1e-3)]
    if duplicates:
        i = duplicates[0]
        raise InputError(
            f"{name} has {len(duplicates)} slice(s) at a position another slice already has (e.g. {files[i]} and "
            f"{files[i + 1]} at {along[i]:.2f} mm along the slice normal): the folder mixes two acquisitions or "
            "holds copies; keep one file per position (or choose a series with --series-uid)."
        )
    uneven = [i for i, gap in enumerate(gaps) if abs(gap - typical) > SLICE_GAP_TOLERANCE * typical]
    if uneven:
        i = uneven[0]
        missing = round(gaps[i] / typical) - 1
        hint = f"about {missing} slice(s) are missing there" if missing >= 1 else "the slices are unevenly spaced"
        raise InputError(
            f"{name} has a gap of {gaps[i]:.2f} mm between {files[i]} and {files[i + 1]} (at {along[i]:.2f} and "
            f"{along[i + 1]:.2f} mm along the slice normal) where the slices are {typical:.2f} mm apart: {hint} "
            f"({len(uneven)} uneven gap(s) in {len(files)} files). MaskMed does not resample uneven series: export "
            "the complete series (or one resampled to even spacing, e.g. in 3D Slicer)."
        )
    # The series' header as ITK will assemble it: one slice's in-plane geometry, stacked at the typical gap.
    size = (*header.size[:2], len(files))
    spacing = (*header.spacing[:2], typical)
    return ImageHeader(size, spacing, header.origin, header.direction, header.pixel_id, header.components,
                       header.component_bytes)


def _read_dicom_folder(
    folder: Path,
    series_uid: str | None,
    memory_budget: int | None,
    check_header: Callable[[ImageHeader, str], None] | None,
) -> tuple[sitk.Image, str]:
    _check_links(folder)
    series = list_dicom_series(folder)
    if not series:
        raise InputError(f"{folder} holds no DICOM series: {_folder_hint(folder)}")
    if series_uid is None:
        chosen = series[0]  # the most files: in a CT export, the full volume rather than a scout or a summary
    else:
        matches = [s for s in series if s.uid == series_uid]
        if not matches:
            available = "; ".join(s.summary() for s in series)
            raise InputError(
                f"{folder} has no DICOM series with the UID '{series_uid}'. Available series: {available}. "
                "Give one of these UIDs, or none to read the series with the most files."
            )
        chosen = matches[0]
    name = f"The DICOM series '{chosen.uid}' in {folder}" if chosen.uid else f"The DICOM series in {folder}"
    if chosen.num_files > 1:
        header = _slice_geometry(chosen, name)
        validate_header(header, name, memory_budget)
        if check_header is not None:
            check_header(header, name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"{name} could not be read as one volume: a file looks corrupted or truncated, or the series mixes "
            f"images of different sizes (SimpleITK: {sitk_error_reason(error)}). {_REEXPORT}"
        ) from error
    return image, name


def _folder_hint(folder: Path) -> str:
    """What to do when a folder has no DICOM series: point at image files or sub-folders that it does hold."""
    entries = sorted(folder.iterdir())
    volumes = [e.name for e in entries if e.is_file() and _suffix(e) in VOLUME_SUFFIXES]
    folders = [e.name for e in entries if e.is_dir()]
    if volumes:
        shown = ", ".join(volumes[:3]) + (", …" if len(volumes) > 3 else "")
        return f"it holds image files ({shown}): give the path of the file to read instead of the folder."
    if folders:
        shown = ", ".join(folders[:3]) + (", …" if len(folders) > 3 else "")
        return (
            f"it has sub-folders ({shown}), which are not searched: give the folder that directly holds the DICOM "
            "slice files of one series."
        )
    what = "is empty" if not entries else f"holds {len(entries)} files, none of them DICOM"
    return (
        f"it {what}. Give the folder that directly holds the DICOM slice files of one series, or the path of a "
        "NIfTI, NRRD or MetaImage file."
    )
