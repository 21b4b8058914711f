"""Image I/O: clear errors for bad input, the canonical axis order and its exact inverse, DICOM series, writing.

The geometry tests build physically equivalent copies of the real CT (flipped, axis-permuted, stored as LPS/RAS/LAS)
and oblique ones, and check that all of them reach the same canonical array and come back bit-exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the conventional name)
from factories import DicomSlice, write_dicom_series

from maskmed_core.io import (
    InputError,
    atomic_output,
    check_ct_intensities,
    from_canonical,
    list_dicom_series,
    orientation_code,
    read_image,
    spacing_zyx,
    to_canonical,
    write_image,
)

CT = "ct/abdomen_ct_3mm.nii.gz"
CT_LABELS = "ct/abdomen_ct_3mm_totalseg.nii.gz"
DICOM = "ct/chest_abdomen_dicom"
DICOM_LABELS = "ct/chest_abdomen_dicom_totalseg.nii.gz"
MR = "mr/example_mr.nii.gz"

# The real CT is 3 mm isotropic; the geometry tests give it this anisotropic spacing (x, y, z mm) so that a
# spacing that is not permuted together with the axes shows up.
ANISOTROPIC_SPACING = (0.75, 0.85, 2.5)


def _volume(shape_zyx=(6, 7, 8), dtype=np.int16, seed=0) -> np.ndarray:
    """A small random CT-like array in (z, y, x) order, -1000..1000 HU."""
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape_zyx).astype(dtype)


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


# --------------------------------------------------------------------------------------------------------------
# bad input: one test each, asserting that the message names the problem and the remedy


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "ct.nii.gz"
    with pytest.raises(InputError, match="does not exist") as info:
        read_image(path)
    assert str(path) in str(info.value) and "NIfTI" in str(info.value)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no DICOM series") as info:
        read_image(tmp_path)
    assert "is empty" in str(info.value) and "folder that directly holds the DICOM slice files" in str(info.value)


def test_folder_with_an_image_file_points_at_the_file(tmp_path):
    _write(sitk.GetImageFromArray(_volume()), tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match=r"image files \(ct.nii.gz\): give the path of the file"):
        read_image(tmp_path)


def test_2d_image(tmp_path):
    path = _write(sitk.GetImageFromArray(_volume()[0]), tmp_path / "slice.nii.gz")
    with pytest.raises(InputError, match=r"is a 2D image \(8 x 7\); MaskMed needs a 3D CT volume") as info:
        read_image(path)
    assert "export the whole series, not a single slice" in str(info.value)


def test_3d_image_with_a_single_slice_is_2d(tmp_path):
    path = _write(sitk.GetImageFromArray(_volume()[:1]), tmp_path / "slice.nrrd")
    with pytest.raises(InputError, match=r"is a 2D image \(8 x 7 x 1\).*not a single slice"):
        read_image(path)


def test_single_dicom_file_is_2d(shared_data):
    with pytest.raises(InputError, match=r"2D image \(512 x 512 x 1\).*give the folder that holds all slice files"):
        read_image(shared_data / DICOM / "slice01.dcm")


def test_4d_image(tmp_path):
    volumes = [sitk.GetImageFromArray(_volume(seed=k)) for k in range(3)]
    path = _write(sitk.JoinSeries(volumes), tmp_path / "phases.nii.gz")
    with pytest.raises(InputError, match=r"is a 4D image \(8 x 7 x 6 x 3 voxels") as info:
        read_image(path)
    assert "export a single 3D volume" in str(info.value)


def test_vector_image(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, size=(6, 7, 8, 3)).astype(np.uint8)
    path = _write(sitk.GetImageFromArray(rgb, isVector=True), tmp_path / "rgb.nrrd")
    with pytest.raises(InputError, match="has 3 values per voxel") as info:
        read_image(path)
    assert "colour (RGB)" in str(info.value) and "single-channel (grayscale) 3D CT volume" in str(info.value)


def test_constant_volume(tmp_path):
    path = _write(sitk.GetImageFromArray(np.full((6, 7, 8), -1024, np.int16)), tmp_path / "blank.mha")
    with pytest.raises(InputError, match=r"is constant: all 336 voxels \(8 x 7 x 6\) equal -1024") as info:
        read_image(path)
    assert "check that the right volume was exported" in str(info.value)


# NaN/inf voxels are written to .nrrd/.mha: SimpleITK's NIfTI reader (niftilib) silently turns them into 0.
def test_nan_voxels(tmp_path):
    array = _volume(dtype=np.float32)
    array[1, 2, 3] = array[4, 5, 6] = array[5, 0, 0] = np.nan
    path = _write(sitk.GetImageFromArray(array), tmp_path / "nan.mha")
    with pytest.raises(InputError, match=r"contains 3 NaN \(not-a-number\) voxels of 336") as info:
        read_image(path)
    assert "MaskMed needs finite intensities" in str(info.value)


def test_infinite_voxels(tmp_path):
    array = _volume(dtype=np.float64)
    array[0, 0, 0], array[5, 6, 7] = np.inf, -np.inf
    path = _write(sitk.GetImageFromArray(array), tmp_path / "inf.nrrd")
    with pytest.raises(InputError, match="contains 2 infinite voxels of 336") as info:
        read_image(path)
    assert "MaskMed needs finite intensities" in str(info.value)


def test_truncated_real_ct_nifti_gz(shared_data, tmp_path):
    # SimpleITK itself reads this file without complaint and zero-fills the missing half of the volume.
    data = (shared_data / CT).read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="is truncated: its NIfTI header announces 5,520,608 bytes") as info:
        read_image(path)
    assert "looks corrupted or truncated" in str(info.value) and "Re-export the image" in str(info.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_file_each_format(tmp_path, suffix):
    path = _write(sitk.GetImageFromArray(_volume((20, 20, 20))), tmp_path / f"full{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupted or truncated") as info:
        read_image(path)
    assert "Re-export the image" in str(info.value)


def test_text_file_renamed_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("patient 12: CT follows next week\n")
    with pytest.raises(InputError, match="could not be read: the file looks corrupted or truncated") as info:
        read_image(path)
    assert "Re-export the image" in str(info.value)


def _nifti_with_rounded_sform(tmp_path: Path, error: float) -> tuple[Path, sitk.Image]:
    """An oblique .nii without a qform whose sform rotation is off by ``error`` in one entry (float32 rounding of
    an oblique scan's sform is ~1e-4; a larger error is a shear)."""
    image = sitk.GetImageFromArray(_volume((5, 6, 7)))
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-120.5, 84.0, 348.9))
    image.SetDirection(tuple((_rotation(2, 1.2) @ _rotation(0, 2.0)).ravel()))
    path = _write(image, tmp_path / "oblique.nii")
    header = bytearray(path.read_bytes())
    header[252:254] = np.int16(0).tobytes()  # qform_code: unset, as in TotalSegmentator's s0002
    header[254:256] = np.int16(2).tobytes()  # sform_code: aligned
    rows = np.frombuffer(bytes(header[280:328]), dtype="<f4").reshape(3, 4).copy()
    rows[0, 1] += error * 0.9  # (x row, y column) of a 0.9 mm axis
    header[280:328] = rows.astype("<f4").tobytes()
    path.write_bytes(bytes(header))
    return path, image


def test_nifti_sform_orthonormal_only_to_rounding_is_read_with_its_geometry(tmp_path):
    path, original = _nifti_with_rounded_sform(tmp_path, 2e-4)
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(path))  # why this reader exists
    image = read_image(path)
    np.testing.assert_allclose(image.GetDirection(), original.GetDirection(), atol=1e-3)
    np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    assert "ITK_NIFTI_SFORM_PERMISSIVE" not in os.environ
    from maskmed_core.training.dataset import read_label_file

    as_label_map = read_label_file(path)  # a label map written the same way reads the same way
    np.testing.assert_allclose(as_label_map.GetDirection(), original.GetDirection(), atol=1e-3)
    np.testing.assert_allclose(as_label_map.GetOrigin(), original.GetOrigin(), atol=1e-3)


def test_permissive_blocks_in_two_threads_leave_the_variable_unset():
    import threading
    import time

    from maskmed_core.io.nifti_sform import PERMISSIVE_VARIABLE, itk_permissive_sform

    def hold(seconds: float) -> None:
        with itk_permissive_sform():
            assert os.environ[PERMISSIVE_VARIABLE] == "1"
            time.sleep(seconds)

    # The second block starts while the first holds the variable and ends after it: unserialised, it would save
    # "1" as the value to restore and leave the variable set.
    first = threading.Thread(target=hold, args=(0.2,))
    second = threading.Thread(target=hold, args=(0.3,))
    first.start()
    time.sleep(0.05)
    second.start()
    first.join()
    second.join()
    assert PERMISSIVE_VARIABLE not in os.environ


def test_nifti_sform_that_is_sheared_is_refused_with_what_to_do(tmp_path):
    path, _ = _nifti_with_rounded_sform(tmp_path, 0.05)
    with pytest.raises(InputError, match="not a rotation.*resample"):
        read_image(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"unsupported file type \(.png\).*MaskMed reads a NIfTI"):
        read_image(path)


def test_series_uid_with_a_file(tmp_path):
    path = _write(sitk.GetImageFromArray(_volume()), tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="is a file, not a DICOM folder"):
        read_image(path, series_uid="1.2.3")


def test_multi_member_gzip_nifti_is_not_called_truncated(tmp_path):
    # Parallel compressors (bgzip) write several gzip members: the trailer check must not reject those.
    import gzip

    raw = gzip.decompress(_write(sitk.GetImageFromArray(_volume()), tmp_path / "one.nii.gz").read_bytes())
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), _volume())


# --------------------------------------------------------------------------------------------------------------
# CT intensity check


@pytest.fixture(scope="module")
def real_ct(shared_data) -> sitk.Image:
    return read_image(shared_data / CT)


def test_real_ct_reads_and_looks_like_ct(real_ct):
    assert real_ct.GetSize() == (122, 101, 112)
    assert check_ct_intensities(real_ct) is None


def test_mr_gives_an_intensity_warning(shared_data):
    warning = check_ct_intensities(read_image(shared_data / MR))
    assert warning is not None
    assert "do not look like CT in Hounsfield units" in warning and "from -47 to 833" in warning
    assert "MaskMed expects CT in HU" in warning


def test_ct_without_rescale_intercept_gets_a_hint(real_ct):
    stored = sitk.Cast(real_ct + 1207, sitk.sitkUInt16)  # as if the DICOM rescale intercept was dropped
    warning = check_ct_intensities(stored)
    assert warning is not None and "rescale intercept" in warning


# --------------------------------------------------------------------------------------------------------------
# canonical orientation


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    rotation = np.eye(3)
    rotation[i, i] = rotation[j, j] = c
    rotation[i, j], rotation[j, i] = -s, s
    return rotation


def _flip_x_by_hand(image: sitk.Image) -> sitk.Image:
    """The same physical image with its x axis stored the other way round, built with numpy (not SimpleITK)."""
    flipped = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[:, :, ::-1].copy())
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetWidth() - 1, 0, 0)))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1
    flipped.SetDirection(direction.ravel().tolist())
    return flipped


# Physically equivalent copies of an image: the voxels are the same at the same physical point (mm).
# The real CT is stored RAS, so flipping x and y stores it LPS, flipping x stores it LAS.
COPIES = {
    "RAS (as stored)": lambda image: image,
    "LPS": lambda image: sitk.Flip(image, [True, True, False]),
    "LAS": lambda image: sitk.Flip(image, [True, False, False]),
    "LAS built by hand": _flip_x_by_hand,
    "flip y": lambda image: sitk.Flip(image, [False, True, False]),
    "flip z": lambda image: sitk.Flip(image, [False, False, True]),
    "flip xyz": lambda image: sitk.Flip(image, [True, True, True]),
    "permute zxy": lambda image: sitk.PermuteAxes(image, [2, 0, 1]),
    "permute yxz": lambda image: sitk.PermuteAxes(image, [1, 0, 2]),
    "permute yzx + flip": lambda image: sitk.Flip(sitk.PermuteAxes(image, [1, 2, 0]), [True, False, True]),
}
ORIENTATIONS = {"RAS (as stored)": "RAS", "LPS": "LPS", "LAS": "LAS", "LAS built by hand": "LAS"}
ROTATIONS = {"30 deg about z": _rotation(2, 30), "30 deg about z, then x": _rotation(2, 30) @ _rotation(0, 30)}


def _obliqued(image: sitk.Image, rotation: np.ndarray) -> sitk.Image:
    """Same voxel array and origin, direction cosines rotated: the content turns about the origin."""
    oblique = sitk.Image(image)
    oblique.SetDirection((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return oblique


@pytest.fixture(scope="module")
def base(real_ct) -> sitk.Image:
    image = sitk.Cast(real_ct, sitk.sitkFloat32)
    image.SetSpacing(ANISOTROPIC_SPACING)
    return image


@pytest.fixture(scope="module")
def base_labels(shared_data, base) -> sitk.Image:
    labels = sitk.ReadImage(str(shared_data / CT_LABELS))
    assert labels.GetPixelID() == sitk.sitkUInt8
    labels.CopyInformation(base)
    return labels


@pytest.fixture(scope="module")
def expected_canonical(base):
    """What the canonical grid of the (RAS) base must be, derived without DICOMOrient: x and y reversed."""
    array = sitk.GetArrayFromImage(base)[:, ::-1, ::-1]
    nx, ny, _ = base.GetSize()
    origin = base.TransformIndexToPhysicalPoint((nx - 1, ny - 1, 0))
    return array, origin


@pytest.mark.parametrize("copy", COPIES)
def test_canonical_is_the_same_for_equivalent_copies(base, expected_canonical, copy):
    image = COPIES[copy](base)
    if copy in ORIENTATIONS:
        assert orientation_code(image) == ORIENTATIONS[copy]
    canonical = to_canonical(image)
    array, origin = expected_canonical
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(canonical), array)
    np.testing.assert_allclose(canonical.GetSpacing(), ANISOTROPIC_SPACING, rtol=0, atol=1e-12)
    assert spacing_zyx(canonical) == pytest.approx(ANISOTROPIC_SPACING[::-1], abs=1e-12)
    np.testing.assert_allclose(canonical.GetOrigin(), origin, rtol=0, atol=1e-6)
    np.testing.assert_allclose(canonical.GetDirection(), np.eye(3).ravel(), rtol=0, atol=1e-6)
    assert orientation_code(canonical) == "LPS"


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("copy", ["RAS (as stored)", "LAS built by hand", "flip z", "permute yzx + flip"])
def test_canonical_of_oblique_copies(base, expected_canonical, copy, rotation):
    straight = COPIES[copy](base)
    image = _obliqued(straight, ROTATIONS[rotation])
    canonical = to_canonical(image)
    # Only the closest permutation/flip is applied: the same array as without rotation, the direction stays
    # oblique (the rotation itself, since the canonical direction of the straight copy is the identity), and
    # the canonical origin is the straight one turned about the copy's origin.
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(canonical), expected_canonical[0])
    np.testing.assert_allclose(canonical.GetDirection(), ROTATIONS[rotation].ravel(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(canonical.GetSpacing(), ANISOTROPIC_SPACING, rtol=0, atol=1e-12)
    pivot = np.array(straight.GetOrigin())
    turned = pivot + ROTATIONS[rotation] @ (np.array(expected_canonical[1]) - pivot)
    np.testing.assert_allclose(canonical.GetOrigin(), turned, rtol=0, atol=1e-6)


ALL_COPIES = [(copy, None) for copy in COPIES] + [(copy, rotation) for copy in COPIES for rotation in ROTATIONS]


def _make_copy(image: sitk.Image, copy: str, rotation: str | None) -> sitk.Image:
    image = COPIES[copy](image)
    return image if rotation is None else _obliqued(image, ROTATIONS[rotation])


@pytest.mark.parametrize(("copy", "rotation"), ALL_COPIES[::3])
def test_canonical_keeps_values_at_physical_points(base, copy, rotation):
    image = _make_copy(base, copy, rotation)
    canonical = to_canonical(image)
    rng = np.random.default_rng(1)
    for index in rng.integers(0, image.GetSize(), size=(50, 3)):
        index = [int(i) for i in index]
        point = image.TransformIndexToPhysicalPoint(index)
        canonical_index = canonical.TransformPhysicalPointToIndex(point)
        assert canonical[canonical_index] == image[index]
        # the voxel centre itself, not just a neighbour's
        np.testing.assert_allclose(canonical.TransformIndexToPhysicalPoint(canonical_index), point, atol=1e-6)


def _assert_identical(result: sitk.Image, original: sitk.Image) -> None:
    assert result.GetPixelID() == original.GetPixelID()
    assert result.GetSize() == original.GetSize()
    assert result.GetSpacing() == original.GetSpacing()
    assert result.GetOrigin() == original.GetOrigin()
    assert result.GetDirection() == original.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result), sitk.GetArrayViewFromImage(original))


@pytest.mark.parametrize("kind", ["float32 CT", "uint8 labels"])
@pytest.mark.parametrize(("copy", "rotation"), ALL_COPIES)
def test_from_canonical_inverts_to_canonical_exactly(base, base_labels, copy, rotation, kind):
    original = _make_copy(base if kind == "float32 CT" else base_labels, copy, rotation)
    _assert_identical(from_canonical(to_canonical(original), original), original)


def test_from_canonical_of_a_result_built_from_an_array(base_labels):
    # The way an inference result comes back: an array computed on the canonical grid, geometry copied over.
    original = _make_copy(base_labels, "permute yzx + flip", "30 deg about z")
    canonical = to_canonical(original)
    result = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(canonical) == 5).astype(np.uint8))
    result.CopyInformation(canonical)
    back = from_canonical(result, original)
    assert back.GetOrigin() == original.GetOrigin() and back.GetDirection() == original.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(original) == 5)


def test_from_canonical_rejects_another_grid(base):
    canonical = to_canonical(base)
    shifted = sitk.Image(canonical)
    shifted.SetOrigin(tuple(o + 1.0 for o in canonical.GetOrigin()))
    with pytest.raises(ValueError, match="not on the canonical grid of the reference"):
        from_canonical(shifted, base)
    with pytest.raises(ValueError, match="its size is"):
        from_canonical(canonical[:, :, 1:], base)


# --------------------------------------------------------------------------------------------------------------
# DICOM


@pytest.fixture(scope="module")
def dicom_series(shared_data) -> sitk.Image:
    return read_image(shared_data / DICOM)


def test_dicom_series_reads_as_a_volume(dicom_series):
    assert dicom_series.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(dicom_series.GetSpacing(), (0.977, 0.977, 2.0), atol=1e-3)
    assert orientation_code(dicom_series) == "LPS"
    assert check_ct_intensities(dicom_series) is None  # rescaled to HU by the reader


def test_dicom_label_map_lines_up_by_physical_position(shared_data, dicom_series):
    labels = sitk.ReadImage(str(shared_data / DICOM_LABELS))
    assert orientation_code(labels) == "LAS"  # stored with y reversed: array indices do not match the series
    ct, canonical_labels = to_canonical(dicom_series), to_canonical(labels)
    assert ct.GetSize() == canonical_labels.GetSize()
    half_voxel = np.array(ct.GetSpacing()) / 2
    assert np.all(np.abs(np.subtract(ct.GetOrigin(), canonical_labels.GetOrigin())) < half_voxel)
    np.testing.assert_allclose(ct.GetDirection(), canonical_labels.GetDirection(), atol=1e-6)
    # The same answer by resampling the label map onto the series grid (nearest neighbour, identity transform).
    resampled = sitk.Resample(labels, dicom_series, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    label_array = sitk.GetArrayViewFromImage(canonical_labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(to_canonical(resampled)), label_array)
    # And the organs lie on tissue: almost every labelled voxel is denser than -300 HU once aligned (about 72 %
    # when the arrays are compared index by index instead).
    hu = sitk.GetArrayViewFromImage(ct)
    assert np.mean(hu[label_array > 0] > -300) > 0.95


def test_list_dicom_series(shared_data):
    (series,) = list_dicom_series(shared_data / DICOM)
    assert series.num_files == 20 and len(series.files) == 20
    assert series.description == "CT Body 3.0"
    assert series.uid == ""  # the anonymised files carry no Series Instance UID


def test_unknown_series_uid_lists_the_available_one(shared_data):
    with pytest.raises(InputError, match="has no DICOM series with the UID '1.2.3'. Available series: ") as info:
        read_image(shared_data / DICOM, series_uid="1.2.3")
    assert '20 files, "CT Body 3.0"' in str(info.value)


def _write_dicom_series(folder: Path, uid: str, slices: int, description: str) -> None:
    """A tiny CT series (16 x 16 pixels, `slices` slices 2.5 mm apart, 0.8 mm pixels)."""
    volume = _volume((slices, 16, 16), seed=slices)
    write_dicom_series(folder, [DicomSlice(volume[k], (0.0, 0.0, 2.5 * k)) for k in range(slices)], uid, description)


def test_several_series_reads_the_largest_or_the_one_named(tmp_path):
    big, small = "1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2"
    _write_dicom_series(tmp_path, big, 5, "thin body")
    _write_dicom_series(tmp_path, small, 3, "scout")
    series = list_dicom_series(tmp_path)
    assert [(s.uid, s.num_files, s.description) for s in series] == [(big, 5, "thin body"), (small, 3, "scout")]
    assert read_image(tmp_path).GetSize() == (16, 16, 5)
    image = read_image(tmp_path, series_uid=small)
    assert image.GetSize() == (16, 16, 3)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 2.5), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), _volume((3, 16, 16), seed=3))
    with pytest.raises(InputError, match=f"Available series: '{big}': 5 files.*'{small}': 3 files"):
        read_image(tmp_path, series_uid="9.9")


def test_single_slice_dicom_series_is_2d(tmp_path):
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.7.3", 1, "one")
    with pytest.raises(InputError, match=r"The DICOM series '1.2.826.0.1.3680043.2.1125.7.3' in .* is a 2D image"):
        read_image(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# writing


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("kind", ["int32 CT", "uint8 labels", "float32 probabilities"])
def test_write_round_trip(real_ct, tmp_path, suffix, kind):
    # A 20-slice crop keeps this fast; an oblique direction checks that the direction cosines survive.
    image = real_ct[:, :, 40:60]
    if kind == "uint8 labels":
        image = sitk.Cast(sitk.Clamp(image, lowerBound=0, upperBound=200), sitk.sitkUInt8)
    elif kind == "float32 probabilities":
        image = sitk.Cast(image, sitk.sitkFloat32) / 4000.0
    image = _obliqued(image, ROTATIONS["30 deg about z, then x"])
    path = write_image(image, tmp_path / f"out{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]  # no temporary file left behind
    back = read_image(path)
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    # NIfTI stores the geometry in float32
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)


def test_write_compresses(real_ct, tmp_path):
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        size = write_image(real_ct, tmp_path / f"ct{suffix}").stat().st_size
        assert size < 0.6 * real_ct.GetNumberOfPixels() * 4, suffix


def _failing_write(calls):
    def write(image, path, useCompression=False, *args, **kwargs):  # noqa: N803 (SimpleITK's keyword)
        calls.append(path)
        Path(path).write_bytes(b"half an image")
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: x.cxx:1:\nITK ERROR: disk full")

    return write


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sitk, "WriteImage", _failing_write(calls))
    image = sitk.GetImageFromArray(_volume())
    with pytest.raises(OSError, match="Could not write .*out.nii.gz .*disk full"):
        write_image(image, tmp_path / "out.nii.gz")
    assert calls and calls[0].endswith(".nii.gz")  # the temporary name keeps the extension (picks the writer)
    assert Path(calls[0]).parent == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "out.nrrd"
    target.write_bytes(b"previous result")
    monkeypatch.setattr(sitk, "WriteImage", _failing_write([]))
    with pytest.raises(OSError):
        write_image(sitk.GetImageFromArray(_volume()), target)
    assert target.read_bytes() == b"previous result"
    assert list(tmp_path.iterdir()) == [target]


def test_write_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.mha"
    target.write_bytes(b"previous result")
    write_image(sitk.GetImageFromArray(_volume()), target)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(target)), _volume())
    assert list(tmp_path.iterdir()) == [target]


def test_write_into_a_missing_folder(tmp_path):
    with pytest.raises(InputError, match="the folder .*missing does not exist"):
        write_image(sitk.GetImageFromArray(_volume()), tmp_path / "missing" / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_unsupported_extension(tmp_path):
    with pytest.raises(InputError, match="unsupported file type"):
        write_image(sitk.GetImageFromArray(_volume()), tmp_path / "out.png")


def test_atomic_output(tmp_path):
    target = tmp_path / "case.seg.nrrd"
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".seg.nrrd") and not temporary.exists()
        temporary.write_text("segmentation")
        assert not target.exists()  # nothing at the real path until the block succeeds
    assert target.read_text() == "segmentation"
    assert list(tmp_path.iterdir()) == [target]

    with pytest.raises(KeyError), atomic_output(target) as temporary:
        temporary.write_text("half")
        raise KeyError("writer failed")
    assert target.read_text() == "segmentation"
    assert list(tmp_path.iterdir()) == [target]

    with pytest.raises(FileNotFoundError, match="Nothing was written"), atomic_output(tmp_path / "none.nrrd"):
        pass
    assert list(tmp_path.iterdir()) == [target]


def test_written_file_has_default_permissions(tmp_path):
    path = write_image(sitk.GetImageFromArray(_volume()), tmp_path / "out.nii.gz")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
