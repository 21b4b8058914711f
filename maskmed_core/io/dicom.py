"""DICOM series folders: which series a folder holds, and reading one after checking its slice geometry.

A folder is read as one series (the one with the most files, or the one named by its UID;
:func:`several_series_warning` says which when there are several). Its slices are placed from their headers before
any pixel is decoded, because ITK stacks them on one uniform grid made from the first slice and the first gap:
a slice of another size, pixel spacing or orientation, a slice shifted in its plane, a gantry tilt (positions off
the slice normal: a sheared volume), and a missing, duplicated or unevenly spaced slice are refused with
:class:`~maskmed_core.io.errors.InputError` naming the files, where ITK would misplace every organ in them or
beyond them.
"""

from __future__ import annotations

import errno
import math
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
# DICOM slice geometry: a slice may lie this many pixels (at most, anywhere in its plane) from where the first
# slice's size, pixel spacing, orientation and normal put it. Half a pixel: real series agree to rounding.
GEOMETRY_TOLERANCE_PIXELS = 0.5


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
    """Where a series' slices lie, from their headers, one entry per file in the series' file order.

    first: the first file's header. positions: Image Position (Patient), (3,) arrays, mm, LPS. orientations: Image
    Orientation (Patient), (6,) arrays, the row then column direction cosines. pixel_spacings: (x, y) mm (Pixel
    Spacing as ITK reads it). sizes: (columns, rows) pixels.
    """

    first: ImageHeader
    files: tuple[str, ...]
    positions: list[np.ndarray]
    orientations: list[np.ndarray]
    pixel_spacings: list[tuple[float, float]]
    sizes: list[tuple[int, int]]

    @property
    def normal(self) -> np.ndarray:
        """The first slice's unit normal, (3,) (row cosine x column cosine)."""
        normal = np.cross(self.orientations[0][:3], self.orientations[0][3:])
        return normal / np.linalg.norm(normal)

    @property
    def tolerance_mm(self) -> float:
        """How far a slice may lie from where the first slice's geometry puts it: GEOMETRY_TOLERANCE_PIXELS of the
        first slice's smaller pixel spacing."""
        return GEOMETRY_TOLERANCE_PIXELS * min(self.pixel_spacings[0])


def _slice_geometry(series: DicomSeries, name: str) -> ImageHeader:
    """Check the slice geometry of a DICOM series from its headers (no pixel data) and return its header.

    Every slice must have the first slice's size, pixel spacing and orientation, and lie on the first slice's normal
    (no in-plane shift, no gantry tilt), each within GEOMETRY_TOLERANCE_PIXELS; then each file's Image Position
    (Patient) is projected on the slice normal and the positions must be distinct and evenly spaced within
    SLICE_GAP_TOLERANCE. Otherwise InputError names the slices: ITK would stack them on one uniform grid and
    misplace every organ in the slices that differ or lie beyond a gap.
    """
    placement = _read_slice_placement(series, name)
    if len(placement.positions) < 2:
        return placement.first
    _refuse_mixed_slice_geometry(name, placement)
    _refuse_slices_off_the_normal(name, placement)
    along, files = _positions_along_normal(placement, series)
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    _refuse_duplicate_positions(name, along, gaps, typical, files)
    _refuse_uneven_gaps(name, along, gaps, typical, files)
    return _stacked_header(placement.first, len(files), typical)


def _read_slice_placement(series: DicomSeries, name: str) -> _SlicePlacement:
    """Every file's header (no pixel data), checked one file after the other: InputError names the first file that
    cannot be read or placed."""
    positions, orientations, spacings, sizes = [], [], [], []
    first = None
    for file in series.files:
        reader = _read_slice_header(file, name)
        first = first or reader
        position = _header_numbers(reader, _POSITION_TAG)
        orientation = _header_numbers(reader, _ORIENTATION_TAG)
        placeable = (
            position is not None and position.shape == (3,) and np.isfinite(position).all()
            and orientation is not None and orientation.shape == (6,) and np.isfinite(orientation).all()
            and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) > 0.5
        )
        if not placeable:
            raise InputError(f"{name}: the file {Path(file).name} has an unreadable slice position. {REEXPORT}")
        assert position is not None and orientation is not None  # placeable
        positions.append(position)
        orientations.append(orientation)
        spacing, size = reader.GetSpacing(), reader.GetSize()
        spacings.append((float(spacing[0]), float(spacing[1])))
        sizes.append((int(size[0]), int(size[1])))
    assert first is not None  # a series has files; each was placed or raised
    return _SlicePlacement(ImageHeader.of_reader(first), series.files, positions, orientations, spacings, sizes)


# What to do about slices that do not fit the first slice's geometry.
_MIXED_SERIES_ADVICE = (
    "The folder probably mixes two acquisitions, reformats or fields of view under one Series Instance UID: export "
    "the original series again, or move the slices that differ into a folder of their own."
)


def _file_list(files: list[str]) -> str:
    """Up to three file names of a list, then how many more."""
    shown = ", ".join(Path(f).name for f in files[:3])
    return shown + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def _refuse_mixed_slice_geometry(name: str, placement: _SlicePlacement) -> None:
    """InputError when a slice's size (Rows, Columns), pixel spacing or orientation differs from the first slice's.

    ITK's series reader takes all three from the first file and stacks the others as if they matched: a rotated
    slice would be read rotated, a slice at another pixel spacing scaled, a larger one cut. Tolerances: a slice may
    disagree with the first by GEOMETRY_TOLERANCE_PIXELS pixels at its far edge.
    """
    first_file = Path(placement.files[0]).name
    size0, spacing0, orientation0 = placement.sizes[0], placement.pixel_spacings[0], placement.orientations[0]
    extent_mm = max(n * s for n, s in zip(size0, spacing0, strict=True))

    def size_differs(k: int) -> bool:
        return placement.sizes[k] != size0

    def spacing_differs(k: int) -> bool:  # the last pixel moves by (spacing difference x pixels)
        pairs = zip(placement.pixel_spacings[k], spacing0, size0, strict=True)
        return any(abs(s - s0) * n > GEOMETRY_TOLERANCE_PIXELS * s0 for s, s0, n in pairs)

    def orientation_differs(k: int) -> bool:  # the far edge moves by (angle, radians ~ cosine difference) x extent
        turn = max(np.linalg.norm(placement.orientations[k][:3] - orientation0[:3]),
                   np.linalg.norm(placement.orientations[k][3:] - orientation0[3:]))
        return bool(turn * extent_mm > placement.tolerance_mm)

    def size_text(k: int) -> str:
        columns, rows = placement.sizes[k]
        return f"{columns} x {rows} pixels (Columns x Rows)"

    def spacing_text(k: int) -> str:
        return "{:g} x {:g} mm pixels".format(*placement.pixel_spacings[k])

    def orientation_text(k: int) -> str:
        return "\\".join(f"{v:.4g}" for v in placement.orientations[k])

    def turn_text(k: int) -> str:
        cosine = float(np.clip(np.dot(placement.orientations[k][:3], orientation0[:3]), -1.0, 1.0))
        return f" (rows turned by {math.degrees(math.acos(cosine)):.1f} degrees), so they would be read rotated"

    checks = [
        ("slice sizes", size_differs, size_text, lambda k: ", so they would be cut or padded"),
        ("pixel spacings", spacing_differs, spacing_text, lambda k: ", so they would be read at the wrong scale"),
        ("slice orientations (Image Orientation (Patient))", orientation_differs, orientation_text, turn_text),
    ]
    for what, differs, describe, consequence in checks:
        different = [k for k in range(len(placement.files)) if differs(k)]
        if different:
            k = different[0]
            raise InputError(
                f"{name} mixes {what}: {len(different)} of {len(placement.files)} slices "
                f"({_file_list([placement.files[i] for i in different])}) have {describe(k)} where {first_file} has "
                f"{describe(0)}{consequence(k)}. {_MIXED_SERIES_ADVICE}"
            )


def _refuse_slices_off_the_normal(name: str, placement: _SlicePlacement) -> None:
    """InputError when slices are shifted in their plane relative to the first slice: by a gantry tilt (every slice
    a little further, in proportion to its distance along the normal) or by a jump (some slices elsewhere).

    ITK stacks the slices straight along the normal, with the distance between the first two positions as the
    slice spacing: a tilted series (a sheared volume) would be read with a wrong spacing and its shear dropped.
    MaskMed refuses rather than resamples, so that the label map lies on the slices the user has.
    """
    normal = placement.normal
    offsets = np.array([p - placement.positions[0] for p in placement.positions])  # (n, 3) mm
    along = offsets @ normal  # (n,) mm
    in_plane = offsets - along[:, None] * normal  # (n, 3) mm
    distance = np.linalg.norm(in_plane, axis=1)
    if distance.max() <= placement.tolerance_mm:
        return
    # A gantry tilt: the in-plane offset grows linearly along the normal (a least-squares line through the first
    # slice fits every slice within the tolerance).
    span = float(along @ along)
    shear = (along @ in_plane) / span if span > 0 else np.zeros(3)  # (3,) in-plane mm per mm along the normal
    residual = np.linalg.norm(in_plane - along[:, None] * shear, axis=1)
    if len(along) >= 3 and span > 0 and residual.max() <= placement.tolerance_mm:  # 2 slices: any shift is a line
        angle = math.degrees(math.atan(float(np.linalg.norm(shear))))
        raise InputError(
            f"{name} is tilted: its slices are not stacked along their normal but shifted sideways by "
            f"{float(np.linalg.norm(shear)):.3f} mm per mm ({angle:.1f} degrees, {distance.max():.1f} mm from the "
            "first to the last slice), as in a CT acquired with a gantry tilt. Stacking them straight would distort "
            "the anatomy. Resample the series onto a regular grid and give the resampled volume: e.g. load it in 3D "
            "Slicer's DICOM module with Application Settings > DICOM > Acquisition geometry regularization set to "
            "'harden regularization transform' and save the volume as .nii.gz or .nrrd, or convert it with dcm2niix "
            "(which corrects gantry tilt)."
        )
    moved = [f for f, d in zip(placement.files, distance, strict=True) if d > placement.tolerance_mm]
    worst = int(np.argmax(distance))
    raise InputError(
        f"{name} has slices shifted in their own plane: {len(moved)} of {len(placement.files)} slices "
        f"({_file_list(moved)}) lie up to {distance[worst]:.1f} mm sideways of where {Path(placement.files[0]).name} "
        f"puts them (e.g. {Path(placement.files[worst]).name}), so their anatomy would be misplaced by that much. "
        f"{_MIXED_SERIES_ADVICE}"
    )


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
    along = np.array([p @ placement.normal for p in placement.positions])
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


def _choose_series(folder: Path, series: list[DicomSeries], series_uid: str | None) -> DicomSeries:
    """The series named by ``series_uid``, or the one with the most files (``series`` is sorted so: the first)."""
    if series_uid is None:
        return series[0]  # the most files: in a CT export, the full volume rather than a scout or a summary
    matches = [s for s in series if s.uid == series_uid]
    if not matches:
        available = "; ".join(s.summary() for s in series)
        raise InputError(
            f"{folder} has no DICOM series with the UID '{series_uid}'. Available series: {available}. "
            "Give one of these UIDs, or none to read the series with the most files."
        )
    return matches[0]


def several_series_warning(folder: str | os.PathLike[str], series_uid: str | None) -> str | None:
    """A warning when ``folder`` holds several DICOM series and ``series_uid`` names none of them, else None.

    The folder is read as the series with the most files; the warning names it and the others, so that a user whose
    CT is not the largest series (a folder with a contrast and a native phase, or two patients) can choose it.
    Reads the files' headers only.
    """
    folder = Path(folder)
    if series_uid is not None or not folder.is_dir():
        return None
    series = list_dicom_series(folder)
    if len(series) < 2:
        return None
    chosen, others = series[0], series[1:]
    return (
        f"the folder holds {len(series)} DICOM series; the one with the most files was read, {chosen.summary()}, not "
        f"{'; '.join(s.summary() for s in others)}. To read another, give its UID with --series-uid."
    )


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
    chosen = _choose_series(folder, series, series_uid)
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
