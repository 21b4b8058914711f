"""Which files MaskMed reads as a CT volume, and how a read error is worded for the user.

The lowest room of :mod:`maskmed_core.io`: the NIfTI, DICOM and generic reading modules all name formats and word
SimpleITK's errors the same way through it.
"""

from __future__ import annotations

import re
from pathlib import Path

# File name endings read as one volume (lower case; ".nii.gz" is matched before any single suffix).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# A single DICOM file is read too, only so that the user hears "2D image: give the whole series".
DICOM_FILE_SUFFIXES = (".dcm", ".ima")
FORMATS = (
    "a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, "
    "or a folder that holds one DICOM series"
)
REEXPORT = "Re-export the image, or copy it again if a download or transfer was interrupted."


def volume_suffix(path: Path) -> str:
    """The lower-case file name ending of ``path`` that decides its format (".nii.gz" before ".gz")."""
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES + DICOM_FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()



def sitk_error_reason(error: RuntimeError) -> str:
    """The informative part of a SimpleITK exception text (its first line is only the C++ source location)."""
    lines = [line.strip() for line in str(error).splitlines()[1:]]
    # MetaImage reports a truncated file with a stale errno text ("No such file or directory"): drop it, the file
    # exists (read_image checked).
    lines = [line for line in lines if line and line != "Reason: No such file or directory"]
    text = "; ".join(re.sub(r"^(sitk::ERROR:|ITK ERROR: \w+\(0x[0-9a-f]+\):)\s*", "", line) for line in lines)
    return text[:300] or str(error).strip()[:300]

