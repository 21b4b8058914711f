"""NIfTI headers read by MaskMed itself, where ITK's NIfTI reader would be silent: a voxel size of 0 or NaN (ITK
uses 1 mm), a truncated file (ITK fills zeros; :func:`nifti_payload` says where the voxels lie, for
:mod:`maskmed_core.io.payload` to judge before ITK allocates), NaN or infinite voxels (ITK writes 0), an sform that is
a rotation only up to float rounding (ITK refuses it; read here through :mod:`maskmed_core.io.nifti_sform`).

Only the header (at most 540 bytes) is parsed here; voxels are streamed in bounded chunks.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import volume_suffix
from maskmed_core.io.nifti_sform import SformGeometry, itk_permissive_sform, sform_geometry
from maskmed_core.io.payload import Payload, check_payload
from maskmed_core.io.volume_checks import ORTHONORMAL_TOLERANCE

T = TypeVar("T")


def read_tolerating_sform_rounding(path: Path, read: Callable[[], T]) -> tuple[T, SformGeometry | None]:
    """(``read()``, None) for ``read``, an ITK read of ``path``. For a NIfTI file whose sform ITK refuses only for
    float rounding (:mod:`maskmed_core.io.nifti_sform`): (``read()`` in ITK's permissive mode, the geometry to put on
    what it read). InputError for a sform that is sheared or scaled; ITK's other errors (RuntimeError) pass through
    for the caller to word."""
    try:
        return read(), None
    except RuntimeError as error:
        if "orthonormal" not in str(error) or volume_suffix(path) not in (".nii", ".nii.gz"):
            raise
        header, _ = _read_nifti_header(path)
        geometry = None if header is None else sform_geometry(
            header.qform_code, header.sform_code, header.srow, ORTHONORMAL_TOLERANCE
        )
        if geometry is None:
            raise InputError(
                f"{path} places its voxels by a NIfTI sform that is not a rotation (sheared or scaled axes) and has no "
                "qform; MaskMed needs orthonormal image axes: resample the image onto a regular grid (e.g. 3D Slicer: "
                "Resample Scalar/Vector/DWI Volume) and export it again."
            ) from error
    with itk_permissive_sform():
        return read(), geometry


def nifti_payload(path: Path) -> Payload | None:
    """Where a single-file NIfTI's voxels lie (:func:`~maskmed_core.io.payload.check_payload` judges them), or None
    when the header cannot be judged here (ITK then says it cannot read the file).

    The whole file is one stream, compressed for .nii.gz: it must hold vox_offset + the voxel bytes. ITK's niftilib
    reads a short .nii or .nii.gz without any error and fills the missing voxels with zeros.
    """
    read = _nifti_header_bytes(path)
    if read is None:
        return None
    header, compressed = read
    expected = _nifti_expected_bytes(header)
    if expected is None:
        return None
    return Payload(path, 0, "gzip" if compressed else "raw", expected, "NIfTI")


def check_nifti_complete(path: Path) -> None:
    """Raise InputError when a .nii or .nii.gz file holds less voxel data than its header announces (reading at
    most the data it counts; see :func:`nifti_payload`)."""
    payload = nifti_payload(path)
    if payload is not None:
        check_payload(payload, str(path))


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


def check_nifti_header(path: Path) -> None:
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


def check_nifti_finite(path: Path) -> None:
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
