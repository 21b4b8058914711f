"""Does an image file hold the voxel data its header announces? Decided before any voxel is read.

A header is a few hundred bytes that can claim any size, and ITK allocates the whole image before it reads a voxel
(and fills what is missing with zeros, for NIfTI). So what a file can make MaskMed allocate is bounded here by what
the file holds, whatever memory is free: an uncompressed payload must be as long as the header claims (a file size
compared, nothing read); a compressed one must be able to hold it (deflate expands at most MAX_DEFLATE_RATIO times)
and then decompresses to at least that many bytes, which the gzip trailer says in 4 bytes or a stream counts in
bounded memory, stopping at the announced size.

The format modules say where a payload lies (:class:`Payload`); :func:`check_payload` judges it.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import REEXPORT

# Deflate (gzip, zlib) encodes at best 258 repeated bytes in 2 bits: no stream decompresses to more than 1032 times
# its size (a gzip bomb of zeros reaches about 1030).
MAX_DEFLATE_RATIO = 1032
# Headers and trailers of compressed streams, and rounding: added to the most a compressed payload can hold.
_COMPRESSED_SLACK_BYTES = 1 << 10
# Streaming: compressed bytes read at a time, and the most decompressed bytes held at once.
_READ_BYTES = 1 << 20
_OUTPUT_BYTES = 1 << 24

Encoding = Literal["raw", "gzip", "zlib"]


@dataclass(frozen=True)
class Payload:
    """Where an image file's voxel data lies and how much it must hold.

    data_file: the file that holds the data (the image file itself, or a ``.nhdr``/``.mhd``'s data file).
    offset: bytes of that file before the data; None when the data ends the file (NRRD ``byte skip: -1``,
    MetaImage ``HeaderSize = -1``). encoding: "raw" (stored as read, also text encodings with their minimum
    length), "gzip" (one or more gzip members) or "zlib" (a zlib stream, MetaImage's ``CompressedData``).
    needed: the bytes the data must hold once decompressed (for a NIfTI .nii.gz, header and voxels together).
    format: how messages name the header ("NIfTI", "NRRD", "MetaImage").
    """

    data_file: Path
    offset: int | None
    encoding: Encoding
    needed: int
    format: str


def check_payload(payload: Payload, name: str) -> None:
    """Raise InputError unless ``payload.data_file`` holds ``payload.needed`` bytes; reads no more than the data
    it counts (nothing for a raw payload), in bounded memory.

    name: how messages refer to the image (its path).
    """
    size = _data_file_size(payload, name)
    stored = size - (payload.offset or 0) if payload.offset is not None else size
    if payload.encoding == "raw":
        if stored < payload.needed:
            _refuse(payload, name, f"{_holder(payload, name)} holds only {max(stored, 0):,}")
        return
    most = MAX_DEFLATE_RATIO * max(stored, 0) + _COMPRESSED_SLACK_BYTES
    if payload.needed > most:
        _refuse(payload, name, f"{_holder(payload, name)} holds {max(stored, 0):,} compressed bytes, which "
                               f"decompress to at most {most:,}")
    if payload.encoding == "gzip" and _gzip_trailer_size(payload.data_file) == payload.needed % 2**32:
        return  # a gzip member of the announced size ends the file (a truncated file matches by a 2**-32 chance)
    decompressed = _decompressed_size(payload, payload.needed)
    if decompressed < payload.needed:
        _refuse(payload, name, f"{_holder(payload, name)} holds only {decompressed:,} after decompression")


def _data_file_size(payload: Payload, name: str) -> int:
    """The size of the data file, which must be a regular file: a device (/dev/urandom) or a FIFO has no size to
    check and never ends (or blocks) when read."""
    try:
        status = os.stat(payload.data_file)
    except OSError as error:
        raise InputError(
            f"{name}: its data file {payload.data_file} cannot be opened ({error.strerror}): keep the data file next "
            "to its header under the name the header gives, or save the image as one file (.nrrd, .mha, .nii.gz)."
        ) from error
    if not stat.S_ISREG(status.st_mode):
        raise InputError(
            f"{name}: its data file {payload.data_file} is not a regular file (a device, a pipe or a folder), so it "
            "holds no image: give an image whose voxels are stored in a file, e.g. save it as one .nrrd or .nii.gz."
        )
    return status.st_size


def _holder(payload: Payload, name: str) -> str:
    return "the file" if str(payload.data_file) == name else f"its data file {payload.data_file}"


def _refuse(payload: Payload, name: str, holds: str) -> None:
    raise InputError(
        f"{name} is truncated: its {payload.format} header announces {payload.needed:,} bytes, but {holds}. The "
        "file looks corrupted or truncated, or its header damaged (nothing was read: ITK would allocate the whole "
        f"image first and fill what is missing with zeros). {REEXPORT}"
    )


def _gzip_trailer_size(path: Path) -> int | None:
    """ISIZE, the last 4 bytes of a gzip file: its last member's decompressed size mod 2**32 (None if too short)."""
    with open(path, "rb") as file:
        if file.seek(0, os.SEEK_END) < 18:  # the smallest gzip member
            return None
        file.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", file.read(4))
    return int(isize)


def _decompressed_size(payload: Payload, cap: int) -> int:
    """How many bytes the payload decompresses to, counted up to ``cap`` (then it stops: the rest is not needed).

    Streams _READ_BYTES of input at a time and holds at most _OUTPUT_BYTES of output, so memory stays small at any
    compression ratio. Several gzip members are read one after the other, as zlib's gzread does; bytes after a
    complete member that are not gzip (zero padding) and a damaged stream end the count.
    """
    wbits = 31 if payload.encoding == "gzip" else 47  # 31: gzip members; 47: a zlib (or gzip) header, detected
    total = 0
    decompressor = zlib.decompressobj(wbits=wbits)
    with open(payload.data_file, "rb") as file:
        if payload.offset is not None:
            file.seek(payload.offset)
        while total < cap and (data := file.read(_READ_BYTES)):
            while data and total < cap:
                try:
                    total += len(decompressor.decompress(data, _OUTPUT_BYTES))
                except zlib.error:
                    return total
                if decompressor.eof:
                    if payload.encoding != "gzip":
                        return total
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=wbits)
                else:
                    data = decompressor.unconsumed_tail
        while total < cap and not decompressor.eof:  # output zlib still holds after the last input, bounded
            try:
                output = decompressor.decompress(b"", _OUTPUT_BYTES)
            except zlib.error:
                break
            if not output:
                break
            total += len(output)
    return total
