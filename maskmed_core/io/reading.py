"""Reading a CT volume: NIfTI, NRRD and MetaImage files, and DICOM series folders.

Everything the user can get wrong (a missing path, a damaged file, a single slice, a colour image, NaN voxels…)
raises :class:`~maskmed_core.io.errors.InputError` with a message that says what is wrong and what to do.
The image comes back as SimpleITK gives it: its own pixel type, its own orientation (oblique direction cosines
included) and (x, y, z) index order; :func:`maskmed_core.io.orientation.to_canonical` makes the axis order uniform.
This module only routes a path to its reader and runs the checks in order: the checks themselves live in
:mod:`~maskmed_core.io.volume_checks` (any image), :mod:`~maskmed_core.io.nifti_header` (what ITK's NIfTI reader lets
pass) and :mod:`~maskmed_core.io.dicom` (series folders).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk  # noqa: N813 (the conventional name)

from maskmed_core.io.dicom import read_dicom_folder
from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import (
    DICOM_FILE_SUFFIXES,
    FORMATS,
    REEXPORT,
    VOLUME_SUFFIXES,
    sitk_error_reason,
    volume_suffix,
)
from maskmed_core.io.nifti_header import (
    check_nifti_finite,
    check_nifti_header,
    nifti_payload,
    read_tolerating_sform_rounding,
)
from maskmed_core.io.payload import check_payload
from maskmed_core.io.text_header_payload import check_data_files, text_header_payloads
from maskmed_core.io.volume_checks import ImageHeader, validate_header, validate_volume


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


def _unreadable(path: Path, error: RuntimeError) -> InputError:
    return InputError(
        f"{path} could not be read: the file looks corrupted or truncated, or is not really a "
        f"{volume_suffix(path)} file (SimpleITK: {sitk_error_reason(error)}). {REEXPORT}"
    )



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
    ``check_header(header, name)`` when given, e.g. the predictor's spacing and memory checks), and a file must hold
    the voxel data its header announces (:mod:`~maskmed_core.io.payload`), so a refused image costs no voxel memory
    whatever memory is free; a DICOM series' slice geometry is checked before its pixels are read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist: check the path. MaskMed reads {FORMATS}.")
    if path.is_dir():
        image, name = read_dicom_folder(path, series_uid, memory_budget, check_header)
    else:
        if series_uid is not None:
            raise InputError(
                f"A DICOM series UID ('{series_uid}') was given, but {path} is a file, not a DICOM folder: "
                "give the folder that holds the series, or leave the series UID out."
            )
        image, name = _read_file(path, memory_budget, check_header), str(path)
    validate_volume(image, name)
    return image


def _check_regular_file(path: Path) -> None:
    """InputError for an input that is not a regular file (a FIFO, a device): opening a FIFO blocks until a writer
    comes, a device never ends."""
    import stat

    if not stat.S_ISREG(path.stat().st_mode):
        raise InputError(f"{path} is not a regular file (a pipe or a device), so it holds no image: give the image "
                         f"file itself. MaskMed reads {FORMATS}.")


def _read_file(
    path: Path, memory_budget: int | None, check_header: Callable[[ImageHeader, str], None] | None
) -> sitk.Image:
    suffix = volume_suffix(path)
    if suffix not in VOLUME_SUFFIXES + DICOM_FILE_SUFFIXES:
        raise InputError(
            f"{path} has an unsupported file type ({suffix or 'no extension'}): MaskMed reads {FORMATS}. "
            "Convert it (e.g. in 3D Slicer: Save, as .nii.gz); for DICOM, give the folder that holds the series."
        )
    check_before_header(path)
    nifti = suffix in (".nii", ".nii.gz")
    if nifti:
        check_nifti_header(path)  # before SimpleITK, which turns a 0 or NaN pixdim into 1 mm without a word
    header = read_header(path)
    validate_header(header, str(path), memory_budget)
    check_voxel_data(path, header)
    if check_header is not None:
        check_header(header, str(path))
    image = read_voxels(path)
    if nifti:
        check_nifti_finite(path)
    return image


def check_before_header(path: Path) -> None:
    """What must hold before ITK opens ``path`` at all (InputError otherwise): a regular file, and a text header's
    data files inside the header's own folder (ITK opens them while it reads the header)."""
    _check_regular_file(path)
    check_data_files(path)


def check_voxel_data(path: Path, header: ImageHeader) -> None:
    """InputError unless the file holds the voxel data its header announces: run before ITK allocates the image,
    so that a small file claiming a huge volume costs no memory, whatever memory is free."""
    nifti = volume_suffix(path) in (".nii", ".nii.gz")
    payloads = [p for p in [nifti_payload(path)] if p is not None] if nifti else text_header_payloads(path, header)
    for payload in payloads:
        check_payload(payload, str(path))


def read_voxels(path: Path) -> sitk.Image:
    """The image of a checked file, with a NIfTI sform's geometry where ITK would round it away; InputError
    when ITK cannot read it."""
    try:
        image, geometry = read_tolerating_sform_rounding(path, lambda: sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise _unreadable(path, error) from error
    if geometry is not None:
        geometry.apply(image)
    return image
