"""Where the voxel data of a NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file lies, read from its text header.

Both formats start with a text header that can claim any image size and keep the data after it (attached) or in
a data file it names (detached), or in several (a list of names, or a printf pattern "slice%03d.raw 1 40 1"), each
holding an equal share. :func:`check_data_files` makes sure, before ITK opens any, that every data file lies beside
its header (links resolved) and is a regular file. :func:`text_header_payloads` turns the header into one
:class:`~maskmed_core.io.payload.Payload` per data file for :func:`~maskmed_core.io.payload.check_payload`, from the
header's own fields and the byte size ITK will allocate; a NRRD encoding ITK cannot read (bzip2) is refused here,
since ITK allocates the image before it finds out.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import volume_suffix
from maskmed_core.io.payload import Encoding, Payload
from maskmed_core.io.volume_checks import ImageHeader

# A header longer than this is not a header (real ones are a few hundred bytes; Slicer's .seg.nrrd a few kB per
# segment): such a file is left to ITK.
_MAX_HEADER_BYTES = 1 << 20


def text_header_payloads(path: Path, header: ImageHeader) -> list[Payload]:
    """The payloads of a .nrrd/.nhdr/.mha/.mhd file whose header ITK read as ``header``: one, or one per data file;
    [] when they cannot be judged (another format, no readable header). InputError for a NRRD encoding ITK cannot
    read. Run :func:`check_data_files` first: a pattern's names are expanded here."""
    suffix = volume_suffix(path)
    if suffix in (".nrrd", ".nhdr"):
        return _nrrd_payloads(path, header)
    if suffix in (".mha", ".mhd"):
        return _metaimage_payloads(path, header)
    return []


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


def _data_file_field(path: Path) -> str | None:
    """A detached header's data file field as written (NRRD "data file", MetaImage ElementDataFile); None for
    attached data, another format or an unreadable header."""
    suffix = volume_suffix(path)
    if suffix in (".nrrd", ".nhdr"):
        parsed, key, local = _nrrd_fields(path), "datafile", None
    elif suffix in (".mha", ".mhd"):
        parsed, key, local = _metaimage_fields(path), "elementdatafile", "LOCAL"
    else:
        return None
    value = parsed[0].get(key, "") if parsed is not None else ""
    return None if not value or value.upper() == local else value


def _pattern(field: str) -> tuple[str, range] | None:
    """A printf pattern "<format> <min> <max> <step> [<subdim>]" (both formats): the format and the numbers it takes
    (max included); None for a plain name. InputError for a pattern that names no file or cannot be expanded."""
    words = field.split()
    if len(words) < 4 or "%" not in words[0]:
        return None
    try:
        first, last, step = (int(word) for word in words[1:4])
        numbers = range(first, last + (1 if step > 0 else -1), step)  # a zero step: ValueError
        words[0] % first  # a format that takes no integer, or two: TypeError
    except (TypeError, ValueError) as error:
        raise InputError(f"the data file pattern '{field}' cannot be expanded ({error}): give a printf format "
                         "with one integer field, then the first and last number and a non-zero step") from error
    return words[0], numbers


def data_file_names(path: Path) -> Iterator[str]:
    """The data files a .nrrd/.nhdr/.mha/.mhd header names, as written (relative to its folder, or absolute), one
    by one: one name, a list's names, or a pattern's expanded (lazily: a pattern may claim a billion files)."""
    field = _data_file_field(path)
    if field is None:
        return
    if field.upper().startswith("LIST"):  # the names follow, one a line, to the end of the header
        lines = _header_lines(path) or []
        start = next((i for i, (text, _) in enumerate(lines) if text.strip().upper().endswith(field.upper())), None)
        yield from (text.strip() for text, _ in lines[start + 1:] if text.strip()) if start is not None else ()
        return
    pattern = _pattern(field)
    if pattern is None:
        yield field
        return
    form, numbers = pattern
    yield from (form % number for number in numbers)


_KEEP_BESIDE = ("Put the data file beside the header (a copy, not a link to elsewhere) and name it there without a "
                "folder (e.g. 'data file: image.raw'), or save the image as one file (.nrrd, .nii.gz).")


def check_data_files(path: Path) -> None:
    """Before any ITK call on ``path``: each data file a detached header names must lie in the header's folder (or
    below it, also once links are resolved), exist and be a regular file. ITK opens the data files while it reads
    the header, so a header naming /etc/passwd (or a link to it) would be read as an image, /dev/urandom never ends
    and a FIFO blocks forever; a list that names no file holds no image. Stops at the first file that fails (a
    pattern may claim more files than exist). InputError."""
    folder = os.path.normpath(path.parent.absolute())
    real_folder = os.path.realpath(folder)
    named_any = False
    for name in data_file_names(path):
        named_any = True
        data_file = os.path.normpath(os.path.join(folder, name))  # an absolute name stays as it is
        if os.path.commonpath([folder, data_file]) != folder:
            raise InputError(
                f"{path} names the data file '{name}', which lies outside the header's own folder ({folder}): "
                f"MaskMed reads only data files beside their header. {_KEEP_BESIDE}"
            )
        try:
            mode = os.stat(data_file).st_mode
        except OSError as error:
            raise InputError(f"{path} names the data file '{name}', which cannot be opened ({error.strerror}). "
                             f"{_KEEP_BESIDE}") from error
        if not stat.S_ISREG(mode):
            raise InputError(
                f"{path} names the data file '{name}', which is not a regular file (a device, a pipe or a folder), "
                "so it holds no image: put the data file beside the header, or save the image as one .nrrd or "
                ".nii.gz."
            )
        target = os.path.realpath(data_file)
        if os.path.commonpath([real_folder, target]) != real_folder:
            raise InputError(
                f"{path} names the data file '{name}', a link to {target}, outside the header's own folder: MaskMed "
                f"reads only data files beside their header. {_KEEP_BESIDE}"
            )
    if not named_any and _data_file_field(path) is not None:  # ITK would read zeros for the whole image it claims
        raise InputError(f"{path} names its data files as a list but lists none, so it holds no image. {_KEEP_BESIDE}")


def _shares(path: Path, needed: int) -> list[tuple[Path, int]]:
    """Each data file of a detached header (relative to its folder) with the bytes it must hold: an equal share of
    ``needed``, rounded down (a lower bound)."""
    names = list(data_file_names(path))  # check_data_files has seen that each exists: the list is finite
    return [(path.parent / name, needed // len(names)) for name in names]


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


def _nrrd_payloads(path: Path, header: ImageHeader) -> list[Payload]:
    """NRRD: fields "key: value" up to an empty line (the attached data follows it); "data file" names a detached
    one (relative to the header's folder); "byte skip" skips bytes before the data (-1: the data ends the file; for
    gzip, bytes of the decompressed stream). "line skip" is not counted (it only makes the data start later), so
    the check is a lower bound there."""
    parsed = _nrrd_fields(path)
    if parsed is None:
        return []
    fields, data_start = parsed
    encoding = fields.get("encoding", "").lower()
    if encoding not in _NRRD_ENCODINGS:
        # ITK reads the header of a bzip2 file, allocates the whole image and only then fails: refuse first.
        raise InputError(
            f"{path} stores its voxels with the NRRD encoding '{encoding}', which MaskMed (ITK) cannot read: save it "
            "again with raw or gzip encoding (e.g. in 3D Slicer, or with SimpleITK), or as .nii.gz."
        )
    if fields.get("datafile") is None:
        if data_start is None:
            return []  # no data: ITK will say so
        files, base_offset = [(path, _nrrd_needed_bytes(encoding, header))], data_start
    else:
        files, base_offset = _shares(path, _nrrd_needed_bytes(encoding, header)), 0
    try:
        byte_skip = int(fields.get("byteskip", "0"))  # per data file
    except ValueError:
        return []
    kind = _NRRD_ENCODINGS[encoding]
    if kind == "gzip":
        return [Payload(file, base_offset, kind, needed + max(byte_skip, 0), "NRRD") for file, needed in files]
    offset = None if byte_skip == -1 else base_offset + max(byte_skip, 0)
    return [Payload(file, offset, kind, needed, "NRRD") for file, needed in files]


def _metaimage_payloads(path: Path, header: ImageHeader) -> list[Payload]:
    """MetaImage: "Key = Value" lines, the last one ElementDataFile: LOCAL (the data follows that line) or data files
    (relative to the header's folder) from each of which HeaderSize bytes are skipped (-1: the data ends the file).
    CompressedData = True: a zlib stream. BinaryData = False: text."""
    parsed = _metaimage_fields(path)
    if parsed is None:
        return []
    fields, data_start = parsed
    data_file_field = fields.get("elementdatafile")
    if data_start is None or not data_file_field:
        return []
    try:
        header_size = int(fields.get("headersize", "0"))
    except ValueError:
        return []
    compressed = fields.get("compresseddata", "false").lower() == "true"
    binary = fields.get("binarydata", "true").lower() == "true"
    encoding: Encoding = "zlib" if compressed else "raw"
    needed = header.voxel_bytes if binary or compressed else 2 * _values(header) - 1
    if data_file_field.upper() == "LOCAL":
        files, offset = [(path, needed)], data_start
    else:
        files, offset = _shares(path, needed), max(header_size, 0)
    data_offset = None if header_size == -1 and not compressed else offset
    return [Payload(file, data_offset, encoding, share, "MetaImage") for file, share in files]
