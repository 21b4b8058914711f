"""Image input/output for maskmed_core: reading and checking CT volumes, the canonical axis order, atomic writing.

Bad user input raises :class:`InputError`, whose message says what is wrong and what to do. The names below are
imported on first use (PEP 562): ``from maskmed_core.io import InputError`` (or ``maskmed_core.io.errors``) does not
import SimpleITK, so code that only needs the error type (training from a preprocessed cache on a machine without
SimpleITK) runs without it; reading and writing images import it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from maskmed_core.io.errors import InputError

if TYPE_CHECKING:
    from maskmed_core.io.dicom import DicomSeries, list_dicom_series
    from maskmed_core.io.orientation import (
        CANONICAL_ORIENTATION,
        from_canonical,
        orientation_code,
        spacing_zyx,
        to_canonical,
    )
    from maskmed_core.io.reading import read_image
    from maskmed_core.io.volume_checks import check_ct_intensities, validate_volume
    from maskmed_core.io.writing import atomic_output, write_image

_WHERE = {
    "CANONICAL_ORIENTATION": "maskmed_core.io.orientation",
    "from_canonical": "maskmed_core.io.orientation",
    "orientation_code": "maskmed_core.io.orientation",
    "spacing_zyx": "maskmed_core.io.orientation",
    "to_canonical": "maskmed_core.io.orientation",
    "DicomSeries": "maskmed_core.io.dicom",
    "check_ct_intensities": "maskmed_core.io.volume_checks",
    "list_dicom_series": "maskmed_core.io.dicom",
    "read_image": "maskmed_core.io.reading",
    "validate_volume": "maskmed_core.io.volume_checks",
    "atomic_output": "maskmed_core.io.writing",
    "write_image": "maskmed_core.io.writing",
}
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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
