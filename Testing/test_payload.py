"""What an image file can make MaskMed allocate is bounded by what the file holds (issue 23, section 4): a tiny file
whose header claims gigabytes is refused before ITK allocates anything, whatever memory is free. Each test gives
a memory budget far above the claim (as on a machine with a terabyte free) and makes SimpleITK's voxel read fail
the test if it is reached; the CLI measurement with no budget variable set is in test_hostile_inputs.py."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from maskmed_core.io.errors import InputError
from maskmed_core.io.payload import MAX_DEFLATE_RATIO
from maskmed_core.io.reading import read_image
from maskmed_core.untrusted import MEMORY_BUDGET_ENV

TERABYTE = 1 << 40
GIB_2 = 2 * 1024**3  # what the hostile headers below claim: 1024^3 int16 voxels


@pytest.fixture
def no_voxel_read(monkeypatch):
    """No budget variable, and sitk.ReadImage fails the test: a refusal must come from the header and file sizes."""
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)

    def read_image_called(*args, **kwargs):
        pytest.fail("sitk.ReadImage was called: the voxels would have been allocated")

    monkeypatch.setattr(sitk, "ReadImage", read_image_called)


def refusal(path: Path) -> str:
    with pytest.raises(InputError) as info:
        read_image(path, memory_budget=TERABYTE)
    return str(info.value)


def nifti_header_claiming_1024_cubed(tmp_path: Path) -> bytes:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(tmp_path / "small.nii"))
    header = bytearray((tmp_path / "small.nii").read_bytes()[:352])
    struct.pack_into("<8h", header, 40, 3, 1024, 1024, 1024, 1, 1, 1, 1)
    return bytes(header)


NRRD_HEADER = (
    "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 1024 1024 1024\n"
    "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: {encoding}\n{data_file}\n"
)
METAIMAGE_HEADER = (
    "ObjectType = Image\nNDims = 3\nDimSize = 1024 1024 1024\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"
    "{compressed}ElementDataFile = {data_file}\n"
)


def test_352_byte_nifti_claiming_2_gib_is_refused_before_reading(tmp_path, no_voxel_read):
    path = tmp_path / "huge.nii"
    path.write_bytes(nifti_header_claiming_1024_cubed(tmp_path))
    assert path.stat().st_size == 352
    message = refusal(path)
    assert "is truncated: its NIfTI header announces 2,147,484,000 bytes, but the file holds only 352" in message
    assert "nothing was read" in message and "Re-export the image" in message


def test_gzipped_nifti_claiming_more_than_deflate_can_hold_is_refused_without_decompressing(tmp_path, no_voxel_read):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(nifti_header_claiming_1024_cubed(tmp_path)))
    size = path.stat().st_size
    message = refusal(path)
    assert f"but the file holds {size:,} compressed bytes, which decompress to at most" in message


def test_gzipped_nifti_whose_stream_falls_short_is_counted_and_refused(tmp_path, no_voxel_read):
    """Two gzip members (as bgzip writes) holding 4 MiB of voxels where the header announces 8 MiB: within what
    deflate could hold, and the trailer gives only the last member's size, so the stream is counted (up to the
    announced size, in bounded memory) and falls short."""
    header = bytearray(nifti_header_claiming_1024_cubed(tmp_path))
    struct.pack_into("<8h", header, 40, 3, 1024, 1024, 4, 1, 1, 1, 1)  # 8 MiB of int16
    voxels = np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8).tobytes()  # incompressible
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)) + gzip.compress(voxels))
    message = refusal(path)
    assert f"announces {352 + (8 << 20):,} bytes, but the file holds only {352 + (4 << 20):,} after decompression" \
        in message


@pytest.mark.parametrize(("name", "encoding", "data", "phrase"), [
    ("raw.nrrd", "raw", b"", "but the file holds only 0"),
    ("text.nrrd", "ascii", b"1 2 3\n", "announces 2,147,483,647 bytes, but the file holds only 6"),
    ("gzip.nrrd", "gzip", gzip.compress(bytes(1000)), "compressed bytes, which decompress to at most"),
])
def test_small_nrrd_claiming_2_gib_is_refused(tmp_path, no_voxel_read, name, encoding, data, phrase):
    path = tmp_path / name
    path.write_bytes(NRRD_HEADER.format(encoding=encoding, data_file="").encode() + data)
    assert path.stat().st_size < 300
    message = refusal(path)
    assert "its NRRD header announces" in message and phrase in message


def test_detached_nrrd_header_with_a_short_data_file_is_refused(tmp_path, no_voxel_read):
    (tmp_path / "huge.raw").write_bytes(bytes(100))
    path = tmp_path / "huge.nhdr"
    path.write_text(NRRD_HEADER.format(encoding="raw", data_file="data file: huge.raw\n"))
    message = refusal(path)
    assert f"announces {GIB_2:,} bytes, but its data file {tmp_path / 'huge.raw'} holds only 100" in message


@pytest.fixture
def no_itk(monkeypatch, no_voxel_read):
    """As no_voxel_read, and reading a header with ITK fails the test too: ITK opens a detached data file while it
    reads the header (a FIFO there blocks it forever)."""
    def itk_called(*args, **kwargs):
        pytest.fail("ITK read the header")

    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation", itk_called)


@pytest.mark.parametrize("header", ["device.nhdr", "device.mhd"])
def test_data_file_that_is_a_device_is_refused_without_reading_it(tmp_path, no_itk, header):
    (tmp_path / "zero").symlink_to("/dev/zero")  # beside the header, but a device
    path = tmp_path / header
    text = (NRRD_HEADER.format(encoding="raw", data_file="data file: zero\n") if header.endswith(".nhdr")
            else METAIMAGE_HEADER.format(compressed="", data_file="zero"))
    path.write_text(text)
    assert "names the data file 'zero', which is not a regular file (a device, a pipe or a folder)" in refusal(path)


@pytest.mark.parametrize("data_file", ["/etc/passwd", "/dev/urandom", "../outside.raw", "sub/../../outside.raw"])
@pytest.mark.parametrize("header", ["evil.nhdr", "evil.mhd", "evil.nrrd", "evil.mha"])
def test_data_file_outside_the_header_s_folder_is_refused_before_itk(tmp_path, no_itk, data_file, header):
    folder = tmp_path / "case"
    folder.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(1 << 10))
    path = folder / header
    text = (NRRD_HEADER.format(encoding="raw", data_file=f"data file: {data_file}\n") if "nrrd" in header
            or header.endswith(".nhdr") else METAIMAGE_HEADER.format(compressed="", data_file=data_file))
    path.write_text(text)
    message = refusal(path)
    assert f"names the data file '{data_file}', which lies outside the header's own folder" in message
    assert "Put the data file beside the header" in message


def test_data_file_list_naming_a_file_elsewhere_is_refused(tmp_path, no_itk):
    (tmp_path / "slice0.raw").write_bytes(bytes(1 << 10))
    path = tmp_path / "slices.nhdr"
    path.write_text(NRRD_HEADER.format(encoding="raw", data_file="data file: LIST\nslice0.raw\n/etc/passwd\n"))
    assert "names the data file '/etc/passwd', which lies outside the header's own folder" in refusal(path)


def test_data_file_beside_the_header_under_an_absolute_name_is_read(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.int16).reshape(4, 4, 4)), str(tmp_path / "a.nhdr"))
    path = tmp_path / "a.nhdr"
    data_name = next(line.split(": ", 1)[1] for line in path.read_text().splitlines() if line.startswith("data file"))
    path.write_text(path.read_text().replace(f"data file: {data_name}", f"data file: {tmp_path / data_name}"))
    assert read_image(path).GetSize() == (4, 4, 4)


FIFO_READ = """
import sys
from maskmed_core.io.errors import InputError
from maskmed_core.io.reading import read_image
try:
    read_image(sys.argv[1])
except InputError as error:
    print("refused:", error)
"""


@pytest.mark.parametrize("case", ["input", "nhdr data file", "mhd data file"])
def test_fifo_as_input_or_data_file_is_refused_without_hanging(tmp_path, case):
    """Issue 23: a FIFO blocked the read forever (ITK opens it and waits for a writer); the read runs in a child
    process with a timeout, so a hang fails the test instead of stopping the suite."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / ("input.nii" if case == "input" else "data.raw")
    os.mkfifo(fifo)
    path = fifo
    if case == "nhdr data file":
        path = tmp_path / "header.nhdr"
        path.write_text(NRRD_HEADER.format(encoding="raw", data_file="data file: data.raw\n"))
    elif case == "mhd data file":
        path = tmp_path / "header.mhd"
        path.write_text(METAIMAGE_HEADER.format(compressed="", data_file="data.raw"))
    repo = Path(__file__).resolve().parents[1]
    # The timeout only guards against the hang being back; generous, so a busy machine's slow start cannot fail it.
    run = subprocess.run([sys.executable, "-c", FIFO_READ, str(path)], capture_output=True, text=True, timeout=600,
                         cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0 and "refused:" in run.stdout, run.stdout + run.stderr
    assert "is not a regular file (a pipe or a device)" in run.stdout or "which is not a regular file" in run.stdout


def test_nrrd_encoding_itk_cannot_read_is_refused_before_itk_allocates(tmp_path, no_voxel_read):
    path = tmp_path / "bz.nrrd"
    path.write_bytes(NRRD_HEADER.format(encoding="bzip2", data_file="").encode() + b"BZh9")
    assert "NRRD encoding 'bzip2', which MaskMed (ITK) cannot read" in refusal(path)


@pytest.mark.parametrize(("name", "compressed", "data_file", "data", "phrase"), [
    ("raw.mha", "", "LOCAL", bytes(10), "but the file holds only 10"),
    ("zlib.mha", "CompressedData = True\n", "LOCAL", zlib.compress(bytes(100_000)),
     "compressed bytes, which decompress to at most"),
    ("raw.mhd", "", "huge.raw", b"", "but its data file"),
])
def test_small_metaimage_claiming_2_gib_is_refused(tmp_path, no_voxel_read, name, compressed, data_file, data,
                                                   phrase):
    (tmp_path / "huge.raw").write_bytes(bytes(100))
    path = tmp_path / name
    path.write_bytes(METAIMAGE_HEADER.format(compressed=compressed, data_file=data_file).encode() + data)
    message = refusal(path)
    assert f"its MetaImage header announces {GIB_2:,} bytes" in message and phrase in message


def test_deflate_bound_is_what_zlib_reaches(tmp_path):
    """MAX_DEFLATE_RATIO is an upper bound: zeros at the best compression come close to it but never exceed it."""
    data = bytes(64 << 20)
    ratio = len(data) / len(zlib.compress(data, 9))
    assert 1000 < ratio <= MAX_DEFLATE_RATIO


@pytest.mark.parametrize(("suffix", "compressed"), [
    (".nii", False), (".nii.gz", True), (".nrrd", False), (".nrrd", True), (".nhdr", False), (".nhdr", True),
    (".mha", False), (".mha", True), (".mhd", False), (".mhd", True),
])
def test_complete_files_of_every_layout_are_read(tmp_path, monkeypatch, suffix, compressed):
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    array = np.random.default_rng(1).integers(-1000, 1000, (12, 10, 8)).astype(np.int16)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), compressed)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)


def test_multi_member_gzip_with_zero_padding_is_complete(tmp_path):
    """bgzip writes several members; some tools pad the file with zeros: neither is called truncated."""
    array = np.random.default_rng(2).integers(-1000, 1000, (6, 7, 8)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "one.nii"))
    raw = (tmp_path / "one.nii").read_bytes()
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]) + bytes(512))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)


SMALL_NRRD = (
    "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n"
    "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\n{data_file}\n"
)


def test_data_file_that_links_outside_the_header_s_folder_is_refused_before_itk(tmp_path, no_itk):
    """Issue 23: a link planted beside the header under the name it gives was read wherever it pointed."""
    folder = tmp_path / "case"
    folder.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(128))
    (folder / "data.raw").symlink_to(tmp_path / "secret.raw")
    path = folder / "image.nhdr"
    path.write_text(SMALL_NRRD.format(data_file="data file: data.raw"))
    message = refusal(path)
    assert f"names the data file 'data.raw', a link to {tmp_path / 'secret.raw'}, outside the header's own folder" \
        in message and "a copy, not a link to elsewhere" in message


def test_data_file_linked_within_the_header_s_folder_is_read(tmp_path):
    array = np.arange(64, dtype=np.int16).reshape(4, 4, 4)
    (tmp_path / "stored.raw").write_bytes(array.tobytes())
    (tmp_path / "data.raw").symlink_to("stored.raw")
    path = tmp_path / "image.nhdr"
    path.write_text(SMALL_NRRD.format(data_file="data file: data.raw"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)


def _slices(folder: Path, array: np.ndarray, name: str = "slice{:02d}.raw") -> None:
    for index, plane in enumerate(array):
        (folder / name.format(index)).write_bytes(plane.tobytes())


@pytest.mark.parametrize("data_file", ["data file: slice%02d.raw 0 3 1",
                                       "data file: LIST\nslice00.raw\nslice01.raw\nslice02.raw\nslice03.raw"],
                         ids=["pattern", "list"])
def test_image_in_one_data_file_per_slice_is_read(tmp_path, data_file):
    array = np.arange(64, dtype=np.int16).reshape(4, 4, 4)
    _slices(tmp_path, array)
    path = tmp_path / "image.nhdr"
    path.write_text(SMALL_NRRD.format(data_file=data_file))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)


@pytest.mark.parametrize("data_file", ["data file: slice%04d.raw 0 1023 1",
                                       "data file: LIST\n" + "\n".join(f"slice{i:04d}.raw" for i in range(1024))],
                         ids=["pattern", "list"])
def test_per_slice_data_files_shorter_than_their_share_are_refused_before_reading(tmp_path, no_voxel_read,
                                                                                   data_file):
    """Issue 23 (memory bounded by what the files hold): lists and patterns were left to the memory budget alone.
    1024 slice files of 1 KiB where the header claims 2 MiB each."""
    for index in range(1024):
        (tmp_path / f"slice{index:04d}.raw").write_bytes(bytes(1024))
    path = tmp_path / "huge.nhdr"
    path.write_text(NRRD_HEADER.format(encoding="raw", data_file=data_file))
    message = refusal(path)
    assert f"announces {GIB_2 // 1024:,} bytes, but its data file {tmp_path / 'slice0000.raw'} holds only 1,024" \
        in message


def test_pattern_claiming_a_billion_files_stops_at_the_first_missing_one(tmp_path, no_itk):
    _slices(tmp_path, np.zeros((3, 4, 4), np.int16), "s{:d}.raw")
    path = tmp_path / "many.nhdr"
    path.write_text(NRRD_HEADER.format(encoding="raw", data_file="data file: s%d.raw 0 999999999 1"))
    assert "names the data file 's3.raw', which cannot be opened (No such file or directory)" in refusal(path)


@pytest.mark.parametrize("header", ["bad.nhdr", "bad.mhd"])
@pytest.mark.parametrize(("pattern", "phrase"), [("s%d.raw 0 3 0", "arg 3 must not be zero"),
                                                 ("s%d%d.raw 0 3 1", "not enough arguments")])
def test_data_file_pattern_that_cannot_be_expanded_is_refused(tmp_path, no_itk, header, pattern, phrase):
    path = tmp_path / header
    path.write_text(NRRD_HEADER.format(encoding="raw", data_file=f"data file: {pattern}") if header.endswith("nhdr")
                    else METAIMAGE_HEADER.format(compressed="", data_file=pattern))
    message = refusal(path)
    assert f"the data file pattern '{pattern}' cannot be expanded" in message and phrase in message


def test_metaimage_slice_files_by_pattern_are_checked_each(tmp_path, no_itk):
    _slices(tmp_path, np.zeros((2, 4, 4), np.int16), "m{:d}.raw")
    (tmp_path / "m2.raw").symlink_to("/dev/zero")
    path = tmp_path / "slices.mhd"
    path.write_text(METAIMAGE_HEADER.format(compressed="", data_file="m%d.raw 0 3 1"))
    assert "names the data file 'm2.raw', which is not a regular file" in refusal(path)


def test_metaimage_list_naming_no_file_is_refused_before_itk(tmp_path, no_itk):
    """ITK read such a header as an image of zeros of whatever size it claims (2 GiB here) from a 120-byte file."""
    path = tmp_path / "empty.mhd"
    path.write_text(METAIMAGE_HEADER.format(compressed="", data_file="LIST"))
    assert "names its data files as a list but lists none, so it holds no image" in refusal(path)


def _hostile_label_map(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / "labels"
    folder.mkdir()
    if kind == "nifti claiming 2 GiB":
        path = folder / "huge.nii"
        path.write_bytes(nifti_header_claiming_1024_cubed(tmp_path))
    elif kind == "data file outside":
        path = folder / "evil.nhdr"
        path.write_text(NRRD_HEADER.format(encoding="raw", data_file="data file: /etc/passwd\n"))
    elif kind == "data file a device":
        (folder / "zero").symlink_to("/dev/zero")
        path = folder / "device.mhd"
        path.write_text(METAIMAGE_HEADER.format(compressed="", data_file="zero"))
    else:  # a pipe: opening it would block until a writer comes
        path = folder / "pipe.nii.gz"
        os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["nifti claiming 2 GiB", "data file outside", "data file a device", "pipe"])
def test_label_maps_get_the_image_reader_s_refusals(tmp_path, request, monkeypatch, kind):
    """A label map (the reference of `maskmed evaluate`, every case of a training set) is a file from elsewhere as
    much as a CT is: the same refusals hold before ITK opens or allocates anything (they once did not: /etc/passwd
    came back as voxels, a pipe blocked `maskmed evaluate` forever, a 104-byte header took 2 GiB)."""
    from maskmed_core.training.dataset import read_label_file

    # ITK may read a NIfTI header (one file, nothing detached); a text header's data file it must never open.
    request.getfixturevalue("no_voxel_read" if kind == "nifti claiming 2 GiB" else "no_itk")
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str(TERABYTE >> 20))
    path = _hostile_label_map(tmp_path, kind)
    with pytest.raises(InputError) as info:
        read_label_file(path)
    message = str(info.value)
    expected = {"nifti claiming 2 GiB": "is truncated: its NIfTI header announces 2,147,484,000 bytes",
                "data file outside": "names the data file '/etc/passwd', which lies outside the header's own folder",
                "data file a device": "names the data file 'zero', which is not a regular file",
                "pipe": "is not a regular file (a pipe or a device)"}[kind]
    assert expected in message


def test_a_label_map_over_the_memory_budget_is_refused_naming_it(tmp_path, monkeypatch):
    from maskmed_core.training.dataset import read_label_file

    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64, 64), np.uint8)), str(path))
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "0")
    with pytest.raises(InputError, match=r"The label map .*labels.nii.gz has 64 x 64 x 64 voxels .*memory budget"):
        read_label_file(path)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "1")
    assert read_label_file(path).GetSize() == (64, 64, 64)
