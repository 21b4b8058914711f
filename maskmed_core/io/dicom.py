"""DICOM series folders: which series a folder holds, and reading one after checking its slice positions.

A folder is read as one series (the one with the most files, or the one named by its UID). Its slices are placed
from their headers before any pixel is decoded: a missing, duplicated or unevenly spaced slice is refused with
:class:`~maskmed_core.io.errors.InputError` naming the files, because ITK would stack the slices on a uniform grid
and shift every organ beyond the gap.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional name)

from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import REEXPORT, VOLUME_SUFFIXES, sitk_error_reason, volume_suffix
from maskmed_core.io.volume_checks import ImageHeader, validate_header

# DICOM slice positions: gaps may differ from the typical one by this fraction before the series is refused.
SLICE_GAP_TOLERANCE = 0.1


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


# DICOM tags that place a slice: Image Position (Patient), its first voxel's centre (x, y, z mm, LPS), and Image
# Orientation (Patient), the row and column direction cosines (6 numbers).
_POSITION_TAG = "0020|0032"
_ORIENTATION_TAG = "0020|0037"


@dataclass(frozen=True)
class _SlicePlacement:
    """Where a series' slices lie, from their headers: the first file's header, each file's Image Position (Patient)
    (a (3,) array, mm, LPS, in the series' file order) and the Image Orientation (Patient) of the first file ((6,):
    row then column direction cosines)."""

    first: ImageHeader
    positions: list[np.ndarray]
    orientation: np.ndarray


def _slice_geometry(series: DicomSeries, name: str) -> ImageHeader:
    """Check the slice positions of a DICOM series from its headers (no pixel data) and return its header.

    Each file's Image Position (Patient) is projected on the slice normal (from Image Orientation (Patient));
    the positions must be distinct and evenly spaced within SLICE_GAP_TOLERANCE, else InputError names the gap:
    ITK would put the slices on a uniform grid and shift every organ beyond a missing slice.
    """
    placement = _read_slice_placement(series, name)
    if len(placement.positions) < 2:
        return placement.first
    along, files = _positions_along_normal(placement, series)
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    _refuse_duplicate_positions(name, along, gaps, typical, files)
    _refuse_uneven_gaps(name, along, gaps, typical, files)
    return _stacked_header(placement.first, len(files), typical)


def _read_slice_placement(series: DicomSeries, name: str) -> _SlicePlacement:
    """Every file's header (no pixel data), checked one file after the other: InputError names the first file that
    cannot be read or placed."""
    positions = []
    orientation = None
    first = None
    for file in series.files:
        reader = _read_slice_header(file, name)
        first = first or reader
        position = _header_numbers(reader, _POSITION_TAG)
        if orientation is None and position is not None:
            orientation = _header_numbers(reader, _ORIENTATION_TAG)
        placeable = (
            position is not None and position.shape == (3,) and np.isfinite(position).all()
            and orientation is not None and orientation.shape == (6,)
        )
        if not placeable:
            raise InputError(f"{name}: the file {Path(file).name} has an unreadable slice position. {REEXPORT}")
        assert position is not None and orientation is not None  # placeable
        positions.append(position)
    assert first is not None and orientation is not None  # a series has files; each was placed or raised
    return _SlicePlacement(ImageHeader.of_reader(first), positions, orientation)


def _read_slice_header(file: str, name: str) -> sitk.ImageFileReader:
    """A reader holding ``file``'s header, which must carry the two tags that place a slice."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        reason = sitk_error_reason(error)
        raise InputError(f"{name}: the file {file} cannot be read ({reason}). {REEXPORT}") from error
    if not (reader.HasMetaDataKey(_POSITION_TAG) and reader.HasMetaDataKey(_ORIENTATION_TAG)):
        raise InputError(
            f"{name}: the file {Path(file).name} has no slice position or orientation (Image Position/"
            "Orientation (Patient)), so the slices cannot be placed; export the series again from the scanner "
            "or PACS."
        )
    return reader


def _header_numbers(reader: sitk.ImageFileReader, tag: str) -> np.ndarray | None:
    """The backslash-separated numbers of a DICOM tag (a 1D array), None when one of them is not a number."""
    try:
        return np.array([float(v) for v in reader.GetMetaData(tag).split("\\")])
    except ValueError:
        return None


def _positions_along_normal(placement: _SlicePlacement, series: DicomSeries) -> tuple[np.ndarray, list[str]]:
    """(each slice's position along the slice normal, mm, ascending; the file names in that order)."""
    normal = np.cross(placement.orientation[:3], placement.orientation[3:])
    along = np.array([p @ normal for p in placement.positions])
    order = np.argsort(along)
    return along[order], [Path(series.files[i]).name for i in order]


def _refuse_duplicate_positions(
    name: str, along: np.ndarray, gaps: np.ndarray, typical: float, files: list[str]
) -> None:
    """InputError when two slices share a position (gap <= 1e-3 of the typical gap): two acquisitions or copies."""
    duplicates = [i for i, gap in enumerate(gaps) if gap <= 1e-3 * max(typical, 1e-3)]
    if duplicates:
        i = duplicates[0]
        raise InputError(
            f"{name} has {len(duplicates)} slice(s) at a position another slice already has (e.g. {files[i]} and "
            f"{files[i + 1]} at {along[i]:.2f} mm along the slice normal): the folder mixes two acquisitions or "
            "holds copies; keep one file per position (or choose a series with --series-uid)."
        )


def _refuse_uneven_gaps(name: str, along: np.ndarray, gaps: np.ndarray, typical: float, files: list[str]) -> None:
    """InputError when a gap differs from the typical (median) gap by more than SLICE_GAP_TOLERANCE of it."""
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


def _stacked_header(first: ImageHeader, num_slices: int, gap: float) -> ImageHeader:
    """The series' header as ITK will assemble it: one slice's in-plane geometry, ``num_slices`` stacked ``gap`` mm
    apart."""
    size = (*first.size[:2], num_slices)
    spacing = (*first.spacing[:2], gap)
    return ImageHeader(size, spacing, first.origin, first.direction, first.pixel_id, first.components,
                       first.component_bytes)


def read_dicom_folder(
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
            f"images of different sizes (SimpleITK: {sitk_error_reason(error)}). {REEXPORT}"
        ) from error
    return image, name


def _folder_hint(folder: Path) -> str:
    """What to do when a folder has no DICOM series: point at image files or sub-folders that it does hold."""
    entries = sorted(folder.iterdir())
    volumes = [e.name for e in entries if e.is_file() and volume_suffix(e) in VOLUME_SUFFIXES]
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
