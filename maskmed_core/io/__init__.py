"""Image input/output for maskmed_core: reading and checking CT volumes, the canonical axis order, atomic writing.

Importing this package imports SimpleITK (``import maskmed_core`` alone does not), so only code that does I/O
pays for it. Bad user input raises :class:`InputError`, whose message says what is wrong and what to do.
"""

from maskmed_core.io.errors import InputError
from maskmed_core.io.orientation import (
    CANONICAL_ORIENTATION,
    from_canonical,
    orientation_code,
    spacing_zyx,
    to_canonical,
)
from maskmed_core.io.reading import (
    DicomSeries,
    check_ct_intensities,
    list_dicom_series,
    read_image,
    validate_volume,
)
from maskmed_core.io.writing import atomic_output, write_image

__all__ = [
    "CANONICAL_ORIENTATION",
    "DicomSeries",
    "InputError",
    "atomic_output",
    "check_ct_intensities",
    "from_canonical",
    "list_dicom_series",
    "orientation_code",
    "read_image",
    "spacing_zyx",
    "to_canonical",
    "validate_volume",
    "write_image",
]
