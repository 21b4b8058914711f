"""Where the voxel data of a NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file lies, read from its text header.

Both formats start with a text header that can claim any image size and keep the data after it (attached) or in
a data file it names (detached). :func:`text_header_payload` turns the header into a
:class:`~maskmed_core.io.payload.Payload` for :func:`~maskmed_core.io.payload.check_payload`, from the header's own
fields and the byte size ITK will allocate; forms whose stored size cannot be judged from one data file (a list
of slice files, a file name pattern) give None and are bounded by the memory budget alone; a NRRD encoding ITK
cannot read (bzip2) is refused here, since ITK allocates the image before it finds out.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import volume_suffix
from maskmed_core.io.payload import Encoding, Payload
from maskmed_core.io.volume_checks import ImageHeader

# A header longer than this is not a header (real ones are a few hundred bytes; Slicer's .seg.nrrd a few kB per
# segment): such a file is left to ITK.
_MAX_HEADER_BYTES = 1 << 20


def text_header_payload(path: Path, header: ImageHeader) -> Payload | None:
    """The payload of a .nrrd/.nhdr/.mha/.mhd file whose header ITK read as ``header``, or None when it cannot be
    judged (another format, no readable header, several data files). InputError for a NRRD encoding ITK cannot
    read."""
    suffix = volume_suffix(path)
    if suffix in (".nrrd", ".nhdr"):
        return _nrrd_payload(path, header)
    if suffix in (".mha", ".mhd"):
        return _metaimage_payload(path, header)
    return None


def _header_lines(path: Path) -> list[tuple[str, int]] | None:
    """The file's leading text lines, each with the byte offset just after it, up to _MAX_HEADER_BYTES; None when
    the file cannot be read."""
    try:
        with open(path, "rb") as file:
            head = file.read(_MAX_HEADER_BYTES)
    except OSError:
        return None
    lines, start = [], 0
    while (end := head.find(b"\n", start)) >= 0:
        lines.append((head[start:end].rstrip(b"\r").decode("latin-1"), end + 1))
        start = end + 1
    return lines


def _nrrd_fields(path: Path) -> tuple[dict[str, str], int | None] | None:
    """A NRRD header's fields (keys lower-case without spaces: "datafile") and the byte offset after its empty line
    (None without one: detached data); None when the file is not NRRD or cannot be read."""
    lines = _header_lines(path)
    if not lines or not lines[0][0].startswith("NRRD"):
        return None
    fields: dict[str, str] = {}
    for text, after in lines[1:]:
        if not text:
            return fields, after
        if text.startswith("#") or ":=" in text or ": " not in text:
            continue
        key, value = text.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    return fields, None


def _metaimage_fields(path: Path) -> tuple[dict[str, str], int | None] | None:
    """A MetaImage header's fields (keys lower-case) up to ElementDataFile, and the byte offset after that line (None
    without it); None when the file cannot be read."""
    lines = _header_lines(path)
    if not lines:
        return None
    fields: dict[str, str] = {}
    for text, after in lines:
        match = re.match(r"\s*([^=]+?)\s*=\s*(.*?)\s*$", text)  # keys may hold brackets: "dim[0] = 3"
        if match is None:
            continue
        fields[match.group(1).lower()] = match.group(2)
        if match.group(1).lower() == "elementdatafile":
            return fields, after
    return fields, None


def _data_file_names(path: Path) -> list[str]:
    """The data file names a .nrrd/.nhdr/.mha/.mhd header gives, as written (a list's names one by one, a pattern's
    first word); [] for attached data, another format or an unreadable header."""
    suffix = volume_suffix(path)
    if suffix in (".nrrd", ".nhdr"):
        parsed, key, local = _nrrd_fields(path), "datafile", None
    elif suffix in (".mha", ".mhd"):
        parsed, key, local = _metaimage_fields(path), "elementdatafile", "LOCAL"
    else:
        return []
    value = parsed[0].get(key, "") if parsed is not None else ""
    if not value or value.upper() == local:
        return []
    if value.upper().startswith("LIST"):  # the names follow, one a line, to the end of the header
        lines = _header_lines(path) or []
        start = next((i for i, (text, _) in enumerate(lines) if text.strip().upper().endswith(value.upper())), None)
        return [text.strip() for text, _ in lines[start + 1:] if text.strip()] if start is not None else []
    return [value.split()[0]]


def check_data_files(path: Path) -> None:
    """Before any ITK call on ``path``: each data file a detached header names must lie in the header's folder (or
    below it) and be a regular file. ITK opens the data file while it reads the header, so a header naming
    /etc/passwd would be read as an image, /dev/urandom never ends and a FIFO blocks forever. InputError."""
    import os
    import stat

    folder = os.path.normpath(path.parent.absolute())
    for name in _data_file_names(path):
        data_file = os.path.normpath(os.path.join(folder, name))  # an absolute name stays as it is
        if os.path.commonpath([folder, data_file]) != folder:
            raise InputError(
                f"{path} names the data file '{name}', which lies outside the header's own folder ({folder}): "
                "MaskMed reads only data files beside their header. Put the data file beside the header and name "
                "it there without a folder (e.g. 'data file: image.raw'), or save the image as one file (.nrrd, "
                ".nii.gz)."
            )
        try:
            mode = os.stat(data_file).st_mode
        except OSError:
            continue  # missing: the size check (io.payload) or ITK says so
        if not stat.S_ISREG(mode):
            raise InputError(
                f"{path} names the data file '{name}', which is not a regular file (a device, a pipe or a folder), "
                "so it holds no image: put the data file beside the header, or save the image as one .nrrd or "
                ".nii.gz."
            )


def _values(header: ImageHeader) -> int:
    return math.prod(header.size) * header.components


# NRRD encodings (and their aliases in the NRRD spec) as ITK's NrrdIO reads them: the payload's encoding and the
# fewest stored bytes for `voxel_bytes` bytes of `values` values. bzip2 is missing: ITK's NrrdIO is built without it.
_NRRD_ENCODINGS: dict[str, Encoding] = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "ascii": "raw", "text": "raw",
                                        "txt": "raw", "hex": "raw"}


def _nrrd_needed_bytes(encoding: str, header: ImageHeader) -> int:
    if encoding in ("ascii", "text", "txt"):
        return 2 * _values(header) - 1  # one character and a separator per value, the last without one
    if encoding == "hex":
        return 2 * header.voxel_bytes  # two hex digits per byte
    return header.voxel_bytes


def _nrrd_payload(path: Path, header: ImageHeader) -> Payload | None:
    """NRRD: fields "key: value" up to an empty line (the attached data follows it); "data file" names a detached
    one (relative to the header's folder); "byte skip" skips bytes before the data (-1: the data ends the file; for
    gzip, bytes of the decompressed stream). "line skip" is not counted (it only makes the data start later), so
    the check is a lower bound there."""
    parsed = _nrrd_fields(path)
    if parsed is None:
        return None
    fields, data_start = parsed
    encoding = fields.get("encoding", "").lower()
    if encoding not in _NRRD_ENCODINGS:
        # ITK reads the header of a bzip2 file, allocates the whole image and only then fails: refuse first.
        raise InputError(
            f"{path} stores its voxels with the NRRD encoding '{encoding}', which MaskMed (ITK) cannot read: save it "
            "again with raw or gzip encoding (e.g. in 3D Slicer, or with SimpleITK), or as .nii.gz."
        )
    data_file_field = fields.get("datafile")
    if data_file_field is None:
        if data_start is None:
            return None  # no data: ITK will say so
        data_file, base_offset = path, data_start
    elif data_file_field.startswith("LIST") or len(data_file_field.split()) > 1:
        return None  # several data files: a list, or a "name%03d.raw 1 40 1" pattern
    else:
        data_file, base_offset = path.parent / data_file_field, 0
    try:
        byte_skip = int(fields.get("byteskip", "0"))
    except ValueError:
        return None
    needed = _nrrd_needed_bytes(encoding, header)
    kind = _NRRD_ENCODINGS[encoding]
    if kind == "gzip":
        return Payload(data_file, base_offset, kind, needed + max(byte_skip, 0), "NRRD")
    offset = None if byte_skip == -1 else base_offset + max(byte_skip, 0)
    return Payload(data_file, offset, kind, needed, "NRRD")


def _metaimage_payload(path: Path, header: ImageHeader) -> Payload | None:
    """MetaImage: "Key = Value" lines, the last one ElementDataFile: LOCAL (the data follows that line) or a data
    file (relative to the header's folder) from which HeaderSize bytes are skipped (-1: the data ends the file).
    CompressedData = True: a zlib stream. BinaryData = False: text."""
    parsed = _metaimage_fields(path)
    if parsed is None:
        return None
    fields, data_start = parsed
    data_file_field = fields.get("elementdatafile")
    if data_start is None or not data_file_field:
        return None
    try:
        header_size = int(fields.get("headersize", "0"))
    except ValueError:
        return None
    compressed = fields.get("compresseddata", "false").lower() == "true"
    binary = fields.get("binarydata", "true").lower() == "true"
    encoding: Encoding = "zlib" if compressed else "raw"
    needed = header.voxel_bytes if binary or compressed else 2 * _values(header) - 1
    if data_file_field.upper() == "LOCAL":
        data_file, offset = path, data_start
    elif data_file_field.upper().startswith("LIST") or len(data_file_field.split()) > 1:
        return None  # one file per slice, listed or by a pattern
    else:
        data_file, offset = path.parent / data_file_field, max(header_size, 0)
    return Payload(data_file, None if header_size == -1 and not compressed else offset, encoding, needed,
                   "MetaImage")
