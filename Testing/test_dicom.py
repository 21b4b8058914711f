"""DICOM series geometry, checked slice by slice (issue 23, section 2): every slice must have the first slice's size,
pixel spacing and orientation and lie on its normal; a tilted series is refused with what to do; a folder with two
series says which one it read. The series are tiny (16 x 16 pixels) and made in each test."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from factories import AXIAL, DicomSlice, tiny_model_file, write_dicom_series

from maskmed_core.io.dicom import GEOMETRY_TOLERANCE_PIXELS, several_series_warning
from maskmed_core.io.errors import InputError
from maskmed_core.io.reading import read_image

UID = "1.2.826.0.1.3680043.2.1125.23.1"
OTHER_UID = "1.2.826.0.1.3680043.2.1125.23.2"


@dataclass(frozen=True)
class Slice:
    """Where one slice of a synthetic series lies: Image Position (Patient) (mm, LPS), Image Orientation (Patient),
    Pixel Spacing (mm, both directions) and Rows = Columns."""

    position: tuple[float, float, float]
    orientation: tuple[float, ...] = AXIAL
    pixel_spacing: float = 0.8
    pixels: int = 16


def axial_slices(count: int = 8, gap: float = 3.0) -> list[Slice]:
    return [Slice((0.0, 0.0, gap * k)) for k in range(count)]


def write_series(folder: Path, slices: list[Slice], uid: str = UID, prefix: str = "slice") -> Path:
    """One DICOM file per slice, named ``<prefix>_<k>.dcm``, random HU pixels, the geometry of each in its header."""
    rng = np.random.default_rng(len(slices))
    return write_dicom_series(folder, [
        DicomSlice(rng.integers(-1000, 1000, (s.pixels, s.pixels)).astype(np.int16), s.position, s.orientation,
                   s.pixel_spacing) for s in slices
    ], uid, prefix)


def refusal(folder: Path) -> str:
    with pytest.raises(InputError) as info:
        read_image(folder)
    return str(info.value)


def test_consistent_series_is_read(tmp_path):
    image = read_image(write_series(tmp_path, axial_slices()))
    assert image.GetSize() == (16, 16, 8)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 3.0), atol=1e-6)


def test_rounding_in_the_headers_is_tolerated(tmp_path):
    """Real headers agree only to their printed digits: a wobble far below half a pixel is not a problem."""
    rng = np.random.default_rng(3)
    slices = [Slice(tuple(p + rng.uniform(-0.01, 0.01) for p in s.position),
                    tuple(c + rng.uniform(-1e-5, 1e-5) for c in AXIAL), 0.8 + rng.uniform(-1e-5, 1e-5))
              for s in axial_slices()]
    assert read_image(write_series(tmp_path, slices)).GetSize() == (16, 16, 8)


def test_half_the_slices_rotated_is_refused(tmp_path):
    rotated = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # rows along y: turned 90 degrees about the normal
    slices = [Slice(s.position, rotated if k >= 4 else AXIAL) for k, s in enumerate(axial_slices())]
    message = refusal(write_series(tmp_path, slices))
    assert "mixes slice orientations (Image Orientation (Patient)): 4 of 8 slices (slice_04.dcm, slice_05.dcm, " \
           "slice_06.dcm and 1 more)" in message
    assert "have 0\\1\\0\\-1\\0\\0 where slice_00.dcm has 1\\0\\0\\0\\1\\0 (rows turned by 90.0 degrees)" in message
    assert "move the slices that differ into a folder of their own" in message


def test_a_slight_rotation_beyond_half_a_pixel_is_refused(tmp_path):
    """0.5 degrees turns the far edge of a 12.8 mm slice by 0.11 mm (accepted); 3 degrees by 0.67 mm (refused, more
    than half a 0.8 mm pixel)."""
    def turned(degrees: float) -> tuple[float, ...]:
        a = math.radians(degrees)
        return (math.cos(a), math.sin(a), 0.0, -math.sin(a), math.cos(a), 0.0)

    for degrees, accepted in ((0.5, True), (3.0, False)):
        folder = tmp_path / str(degrees)
        write_series(folder, [Slice(s.position, turned(degrees) if k == 7 else AXIAL)
                              for k, s in enumerate(axial_slices())])
        if accepted:
            read_image(folder)
        else:
            assert f"rows turned by {degrees:.1f} degrees" in refusal(folder)


def test_half_the_slices_at_another_pixel_spacing_is_refused(tmp_path):
    slices = [Slice(s.position, pixel_spacing=1.2 if k >= 4 else 0.8) for k, s in enumerate(axial_slices())]
    message = refusal(write_series(tmp_path, slices))
    assert "mixes pixel spacings: 4 of 8 slices (slice_04.dcm" in message
    assert "have 1.2 x 1.2 mm pixels where slice_00.dcm has 0.8 x 0.8 mm pixels" in message


def test_slices_of_another_size_are_refused(tmp_path):
    slices = [Slice(s.position, pixels=20 if k == 3 else 16) for k, s in enumerate(axial_slices())]
    message = refusal(write_series(tmp_path, slices))
    assert "mixes slice sizes: 1 of 8 slices (slice_03.dcm) have 20 x 20 pixels (Columns x Rows) where slice_00.dcm " \
           "has 16 x 16" in message


def test_half_the_slices_shifted_in_plane_is_refused(tmp_path):
    slices = [Slice((50.0 if k >= 4 else 0.0, 0.0, s.position[2])) for k, s in enumerate(axial_slices())]
    message = refusal(write_series(tmp_path, slices))
    assert "slices shifted in their own plane: 4 of 8 slices (slice_04.dcm, slice_05.dcm, slice_06.dcm and 1 more) " \
           "lie up to 50.0 mm sideways" in message


def test_a_shift_within_half_a_pixel_is_tolerated(tmp_path):
    shift = 0.9 * GEOMETRY_TOLERANCE_PIXELS * 0.8
    slices = [Slice((shift if k == 5 else 0.0, 0.0, s.position[2])) for k, s in enumerate(axial_slices())]
    assert read_image(write_series(tmp_path, slices)).GetSize() == (16, 16, 8)


@pytest.mark.parametrize("convention", ["positions sheared", "planes tilted"])
def test_a_gantry_tilted_series_is_refused_with_what_to_do(tmp_path, convention):
    """The issue's case: slices 3.0 mm apart along their normal, each shifted 1.5 mm sideways (26.6 degrees; ITK
    would stack them 3.354 mm apart and drop the shear). Scanners write it either as axial planes whose positions
    move sideways, or as tilted planes whose positions move along the table."""
    count = 40
    if convention == "positions sheared":
        slices = [Slice((0.0, 1.5 * k, 3.0 * k)) for k in range(count)]
    else:
        tilt = math.atan(0.5)
        orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), math.sin(tilt))  # columns turned towards the table axis
        step = 3.0 / math.cos(tilt)  # along the table, so that the planes are 3.0 mm apart along their normal
        slices = [Slice((0.0, 0.0, step * k), orientation) for k in range(count)]
    message = refusal(write_series(tmp_path, slices))
    assert "is tilted" in message and "0.500 mm per mm (26.6 degrees, 58.5 mm from the first to the last" in message
    assert "gantry tilt" in message and "Acquisition geometry regularization" in message and "dcm2niix" in message


def test_two_slices_shifted_apart_are_called_a_shift(tmp_path):
    """With two slices any sideways offset is a straight line: it is reported as a shift, not as a tilt."""
    message = refusal(write_series(tmp_path, [Slice((0.0, 0.0, 0.0)), Slice((5.0, 0.0, 3.0))]))
    assert "shifted in their own plane" in message


def test_two_series_in_one_folder_are_named_in_a_warning(tmp_path):
    write_series(tmp_path, axial_slices(8), UID, prefix="body")
    write_series(tmp_path, axial_slices(3, gap=5.0), OTHER_UID, prefix="scout")
    warning = several_series_warning(tmp_path, None)
    assert warning == (
        f"the folder holds 2 DICOM series; the one with the most files was read, '{UID}': 8 files, \"body\", not "
        f"'{OTHER_UID}': 3 files, \"scout\". To read another, give its UID with --series-uid."
    )
    assert read_image(tmp_path).GetSize() == (16, 16, 8)
    assert several_series_warning(tmp_path, OTHER_UID) is None  # chosen: nothing to warn about
    assert read_image(tmp_path, series_uid=OTHER_UID).GetSize() == (16, 16, 3)


def test_one_series_or_a_file_gives_no_warning(tmp_path):
    write_series(tmp_path / "one", axial_slices())
    assert several_series_warning(tmp_path / "one", None) is None
    assert several_series_warning(tmp_path / "one" / "slice_00.dcm", None) is None


def test_predict_warns_which_series_it_read(tmp_path, capsys):
    from maskmed_core.cli import main

    folder = tmp_path / "dicom"
    write_series(folder, axial_slices(8, gap=1.5), UID, prefix="body")
    write_series(folder, axial_slices(3, gap=5.0), OTHER_UID, prefix="scout")
    model = tiny_model_file(tmp_path / "tiny.maskmed")
    code = main(["predict", str(folder), "-o", str(tmp_path / "out"), "--model", str(model), "--json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, events
    (warning,) = [e for e in events if e["event"] == "message" and "DICOM series" in e["text"]]
    assert warning["level"] == "warning"
    assert f"'{UID}': 8 files" in warning["text"] and f"not '{OTHER_UID}': 3 files" in warning["text"]
    assert "--series-uid" in warning["text"]
