"""A small seeded fuzzer: mutated model-file metadata and NIfTI/NRRD headers, for a bounded time each.

The contract under test: whatever the bytes, loading either works or raises the loader's own typed error
(ModelFileError for model files, InputError for images), never another exception, within the memory budget.
The seed is fixed, so a failure reproduces; MASKMED_FUZZ_SECONDS gives more time for a longer local run.
"""

from __future__ import annotations

import json
import os
import random
import struct
import time

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from factories import tiny_model_file
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from maskmed_core.checkpoint import ModelFileError, load_model_file
from maskmed_core.io.errors import InputError
from maskmed_core.io.reading import read_image

SECONDS = float(os.environ.get("MASKMED_FUZZ_SECONDS", "3"))
# Hostile values a field may be replaced with: wrong types, extremes, control characters, deep nesting.
NASTY = [
    None, True, -1, 0, 1, 2**63, -(2**31), 1e308, -1e-308, "1", "", "\n", "a\x00b", "\u202e", "x" * 10_000,
    [], {}, json.loads("[" * 20 + "1" + "]" * 20), [1] * 1000, {"a": {"b": {"c": []}}}, 3.5, -0.0, [2, 2, 0],
]


def _mutate_json(value, rng: random.Random):
    """A copy of a JSON value with one leaf (or one container) replaced, dropped or duplicated."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        copy = dict(value)
        action = rng.random()
        if action < 0.1:
            del copy[key]
        elif action < 0.15:
            copy[key + "_extra"] = copy[key]
        else:
            copy[key] = _mutate_json(copy[key], rng)
        return copy
    if isinstance(value, list) and value and rng.random() < 0.8:
        copy = list(value)
        index = rng.randrange(len(copy))
        action = rng.random()
        if action < 0.1:
            copy.pop(index)
        elif action < 0.15:
            copy.append(copy[index])
        else:
            copy[index] = _mutate_json(copy[index], rng)
        return copy
    if isinstance(value, (int, float)) and not isinstance(value, bool) and rng.random() < 0.5:
        return rng.choice([value * 1000, -value, value + 1, value / 3, float("nan")])
    return rng.choice(NASTY)


def _mutate_text(text: str, rng: random.Random) -> str:
    """Raw byte-level damage to a metadata string (it need not stay JSON)."""
    position = rng.randrange(len(text) + 1)
    action = rng.random()
    if action < 0.3:
        return text[:position]
    if action < 0.6:
        return text[:position] + rng.choice("[]{}\",:\\\n\x00\u202e9e999") + text[position + 1 :]
    return text[:position] + "[" * rng.randrange(1, 100_000) + text[position:]


def test_fuzz_model_file_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "1024")
    source = tiny_model_file(tmp_path / "tiny.maskmed")
    with safe_open(str(source), framework="pt") as handle:
        original = dict(handle.metadata())
    tensors = load_file(str(source))
    rng = random.Random(12)
    target = tmp_path / "fuzzed.maskmed"
    tries = refused = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        metadata = dict(original)
        field = rng.choice(sorted(metadata))
        if rng.random() < 0.7 and field in ("config", "plans", "classes", "extra"):
            metadata[field] = json.dumps(_mutate_json(json.loads(metadata[field]), rng))
        else:
            metadata[field] = _mutate_text(metadata[field], rng)
        save_file(tensors, str(target), metadata=metadata)
        tries += 1
        try:
            load_model_file(target)
        except ModelFileError:
            refused += 1
        except Exception as error:  # anything else is a bug: report the input that caused it
            pytest.fail(f"{type(error).__name__}: {error} for {field}={metadata[field][:300]!r}")
    assert tries >= 10 and refused >= tries // 4, (tries, refused)


def _nifti_header_fields(order: str = "<") -> list[tuple[int, str]]:
    """(offset, struct format) of the NIfTI-1 header fields that describe geometry and data."""
    fields = [(0, "i"), (70, "h"), (72, "h"), (108, "f"), (252, "h"), (254, "h")]
    fields += [(40 + 2 * i, "h") for i in range(8)]  # dim
    fields += [(76 + 4 * i, "f") for i in range(8)]  # pixdim
    fields += [(256 + 4 * i, "f") for i in range(6)]  # quatern b, c, d and offsets
    fields += [(280 + 4 * i, "f") for i in range(12)]  # srow
    return [(offset, order + fmt) for offset, fmt in fields]


INT_VALUES = [0, 1, -1, 2, 3, 4, 7, 8, 16, 64, 255, 512, 1024, 32767, -32768]
FLOAT_VALUES = [0.0, -0.0, 1e-6, -1.0, 1e6, 1e30, float("nan"), float("inf"), 0.5, 3.0, 352.0]


def test_fuzz_nifti_headers(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "256")
    image = sitk.GetImageFromArray(np.linspace(-1000, 1000, 8 * 10 * 12, dtype=np.float32).reshape(8, 10, 12))
    image.SetSpacing((1.5, 1.5, 3.0))
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(image, str(plain))
    original = plain.read_bytes()
    fields = _nifti_header_fields()
    rng = random.Random(34)
    tries = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            offset, fmt = rng.choice(fields)
            value = rng.choice(FLOAT_VALUES if fmt.endswith("f") else INT_VALUES)
            struct.pack_into(fmt, data, offset, value)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]  # truncated
        path = tmp_path / ("fuzzed.nii.gz" if rng.random() < 0.3 else "fuzzed.nii")
        if path.suffix == ".gz":
            import gzip

            path.write_bytes(gzip.compress(bytes(data)))
        else:
            path.write_bytes(bytes(data))
        tries += 1
        _read_refusing_cleanly(path, f"header bytes {bytes(data[:352]).hex()}")
    assert tries >= 10


NRRD_LINES = {
    "type": ["float", "short", "complex", "double", "uchar", "", "block"],
    "dimension": ["3", "2", "4", "0", "-1", "16", "x"],
    "sizes": ["12 10 8", "12 10 1", "0 10 8", "100000 100000 100000", "12 10", "-1 10 8", "nan 1 1"],
    "space directions": ["(1.5,0,0) (0,1.5,0) (0,0,3)", "(0,0,0) (0,1,0) (0,0,1)", "(1,0.5,0) (0,1,0) (0,0,1)",
                         "(nan,0,0) (0,1,0) (0,0,1)", "(1e-9,0,0) (0,1e-9,0) (0,0,1e-9)", "none (0,1,0) (0,0,1)"],
    "encoding": ["raw", "gzip", "ascii", "bzip2", "nonsense"],
    "endian": ["little", "big", "middle"],
    "space origin": ["(0,0,0)", "(nan,0,0)", "(1e300,0,0)"],
}


def test_fuzz_nrrd_headers(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "256")
    voxels = np.linspace(-1000, 1000, 8 * 10 * 12, dtype=np.float32).tobytes()
    base = {"type": "float", "dimension": "3", "space": "left-posterior-superior", "sizes": "12 10 8",
            "space directions": "(1.5,0,0) (0,1.5,0) (0,0,3)", "kinds": "domain domain domain",
            "endian": "little", "encoding": "raw", "space origin": "(0,0,0)"}
    rng = random.Random(56)
    tries = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        fields = dict(base)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(sorted(NRRD_LINES))
            fields[key] = rng.choice(NRRD_LINES[key])
        header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
        data = voxels[: rng.choice([len(voxels), len(voxels) // 2, 0])]
        path = tmp_path / "fuzzed.nrrd"
        path.write_bytes(header.encode() + data)
        tries += 1
        _read_refusing_cleanly(path, f"header {header!r}")
    assert tries >= 10


# DICOM series: text a mutation writes over one slice's Image Position (Patient), Image Orientation (Patient) or
# Series Instance UID, in place (padded with spaces, so that the file stays valid DICOM): damaged numbers included.
DICOM_TAG_VALUES = {
    "position": ["0\\0\\0", "50\\0\\6", "0\\1.5\\6", "nan\\0\\0", "1e308\\0\\0", "1\\2", "abc\\0\\0",
                 "0.0001\\0\\3"],
    "orientation": ["0\\1\\0\\-1\\0\\0", "1\\0\\0\\0\\0\\-1", "1\\0\\0\\1\\0\\0", "0\\0\\0\\0\\0\\0",
                    "1\\0\\0", "nan\\0\\0\\0\\1\\0", "0.99999\\0.0044\\0\\-0.0044\\0.99999\\0"],
    "uid": ["1.2.826.0.1.3680043.2.1125.99.2"],
}


def test_fuzz_dicom_series(tmp_path, monkeypatch):
    """A consistent 6-slice series (3 mm apart), then damage: a slice's position, orientation or series UID
    rewritten, its pixel spacing or size changed, a slice dropped or copied. Whatever the damage, reading refuses
    with InputError or gives a volume on the first slice's in-plane grid."""
    from factories import AXIAL, DicomSlice, write_dicom_series

    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "256")
    uid = "1.2.826.0.1.3680043.2.1125.99.1"
    original = {"orientation": "\\".join(f"{c:.8f}" for c in AXIAL), "uid": uid}
    rng = random.Random(78)
    pixels = np.random.default_rng(0).integers(-1000, 1000, (6, 12, 12)).astype(np.int16)
    tries = refused = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        slices = [DicomSlice(pixels[k], (0.0, 0.0, 3.0 * k)) for k in range(6)]
        rewrites = []  # (slice index, what, new text)
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(slices))
            action = rng.random()
            if action < 0.5:
                what = rng.choice(sorted(DICOM_TAG_VALUES))
                rewrites.append((k, what, rng.choice(DICOM_TAG_VALUES[what])))
            elif action < 0.65:
                slices[k] = DicomSlice(slices[k].pixels, slices[k].position, slices[k].orientation,
                                       rng.choice([1.2, 0.8001, 0.5, 40.0]))
            elif action < 0.75:
                slices[k] = DicomSlice(np.zeros((rng.choice([8, 16]), 12), np.int16), slices[k].position)
            elif action < 0.9 and len(slices) > 2:
                slices.pop(k)
            else:
                slices.append(slices[k])
        folder = write_dicom_series(tmp_path / f"series{tries}", slices, uid, "fuzzed")
        for k, what, text in rewrites:
            if k >= len(slices):
                continue
            file = folder / f"fuzzed_{k:02d}.dcm"
            old = original.get(what) or "\\".join(f"{p:.6f}" for p in slices[k].position)
            file.write_bytes(file.read_bytes().replace(old.encode(), text.ljust(len(old)).encode()[: len(old)]))
        tries += 1
        case = f"slices {[(s.position, s.pixel_spacing, s.pixels.shape) for s in slices]}, rewrites {rewrites}"
        try:
            image = read_image(folder)
        except InputError:
            refused += 1
            continue
        except Exception as error:
            pytest.fail(f"{type(error).__name__}: {error} for {case}")
        _assert_slices_agree(folder, image, case)
    assert tries >= 5 and refused >= 1, (tries, refused)


def _assert_slices_agree(folder, image, case: str) -> None:
    """An accepted series: every slice file (as ITK reads its header) has the volume's in-plane size, spacing and
    direction, and lies on the volume's slice axis within half a pixel."""
    from maskmed_core.io.dicom import list_dicom_series

    files = list_dicom_series(folder)[0].files
    assert image.GetSize()[2] == len(files), case
    direction = np.array(image.GetDirection()).reshape(3, 3)
    for file in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        reader.ReadImageInformation()
        assert reader.GetSize()[:2] == image.GetSize()[:2], case
        np.testing.assert_allclose(reader.GetSpacing()[:2], image.GetSpacing()[:2], rtol=1e-3, err_msg=case)
        np.testing.assert_allclose(np.array(reader.GetDirection()).reshape(3, 3)[:, :2], direction[:, :2], atol=1e-3,
                                   err_msg=case)
        offset = np.array(reader.GetOrigin()) - np.array(image.GetOrigin())
        sideways = offset - (offset @ direction[:, 2]) * direction[:, 2]
        assert np.linalg.norm(sideways) <= 0.5 * min(image.GetSpacing()[:2]), case


def _read_refusing_cleanly(path, what: str) -> None:
    """Reading a fuzzed file may succeed or raise InputError (a clear refusal); anything else fails the test."""
    try:
        read_image(path)
    except InputError:
        pass
    except Exception as error:
        pytest.fail(f"{type(error).__name__}: {error} for {what}")
