"""Training data layer on the real CTs: loading (nnU-Net folder, JSON and CSV lists), the dataset check, the
fingerprint and plans, and the preprocessing cache.

Two cases: the 3 mm abdomen CT (NIfTI, RAS) and the 20-slice DICOM series (LPS) whose label map is stored LAS
(same physical grid, flipped axis). Labels are TotalSegmentator v2 ids, mapped to the 15 AMOS classes.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from maskmed_core.inference.preprocessing import model_grid_for, prepare
from maskmed_core.io import InputError, read_image, to_canonical
from maskmed_core.plans import Plans
from maskmed_core.plans.fingerprint import Fingerprint, plans_from_fingerprint
from maskmed_core.training import cache as cache_module
from maskmed_core.training.cache import preprocess_cases
from maskmed_core.training.checks import CaseProblem, check_dataset, format_report, without_bad_cases
from maskmed_core.training.dataset import (
    Case,
    DatasetSpec,
    apply_label_mapping,
    label_values,
    load_dataset,
    parse_labels,
    read_case,
)
from maskmed_core.training.fingerprint import compute_fingerprint

CT = "ct/abdomen_ct_3mm.nii.gz"
CT_LABELS = "ct/abdomen_ct_3mm_totalseg.nii.gz"
DICOM = "ct/chest_abdomen_dicom"
DICOM_LABELS = "ct/chest_abdomen_dicom_totalseg.nii.gz"
PLANS_3MM = Plans(spacing=(3.0, 3.0, 3.0), patch_size=(64, 96, 96))
LIVER_AMOS = 6


@pytest.fixture(scope="module")
def amos(shared_data: Path) -> tuple[dict[str, int], dict[int, int]]:
    """(AMOS class name -> AMOS id, TotalSegmentator v2 id -> AMOS id)."""
    table = json.loads((shared_data / "amos15_from_totalseg_v2.json").read_text())["classes"]
    return {c["name"]: c["amos_id"] for c in table}, {c["totalseg_v2_id"]: c["amos_id"] for c in table}


def _nnunet_folder(root: Path, shared_data: Path, labels: dict[str, int]) -> Path:
    """A nnU-Net v2 raw folder with the 3 mm CT as case abdomen_000 (symlinks to the real files)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **labels}, "numTraining": 1}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nii.gz"}))
    (root / "imagesTr" / "abdomen_000_0000.nii.gz").symlink_to(shared_data / CT)
    (root / "labelsTr" / "abdomen_000.nii.gz").symlink_to(shared_data / CT_LABELS)
    (root / "imagesTs" / "abdomen_100_0000.nii.gz").symlink_to(shared_data / CT)
    return root


def _json_list(root: Path, shared_data: Path, labels: dict[str, int]) -> Path:
    """A JSON list: the 3 mm CT (symlinked next to the file) and the DICOM series (a relative path to shared data)."""
    (root / "ct").mkdir(parents=True)
    (root / "ct" / "abdomen.nii.gz").symlink_to(shared_data / CT)
    (root / "ct" / "abdomen_labels.nii.gz").symlink_to(shared_data / CT_LABELS)
    cases = [
        {"name": "abdomen_000", "image": "ct/abdomen.nii.gz", "label": "ct/abdomen_labels.nii.gz"},
        {
            "image": os.path.relpath(shared_data / DICOM, root),
            "label": os.path.relpath(shared_data / DICOM_LABELS, root),
        },
    ]
    path = root / "dataset.json"
    path.write_text(json.dumps({"labels": labels, "cases": cases}))
    return path


@pytest.fixture(scope="module")
def json_spec(tmp_path_factory, shared_data, amos) -> DatasetSpec:
    return load_dataset(_json_list(tmp_path_factory.mktemp("json_list"), shared_data, amos[0]))


# --------------------------------------------------------------------------------------------------------------
# loading


def test_load_nnunet_folder(tmp_path, shared_data, amos):
    folder = _nnunet_folder(tmp_path / "Dataset001_Abdomen", shared_data, amos[0])
    spec = load_dataset(folder)
    assert [c.name for c in spec.cases] == ["abdomen_000"]
    assert spec.cases[0].image == folder / "imagesTr" / "abdomen_000_0000.nii.gz"
    assert spec.cases[0].label == folder / "labelsTr" / "abdomen_000.nii.gz"
    assert spec.labels == amos[0] and "background" not in spec.labels
    assert spec.file_ending == ".nii.gz" and spec.root == folder and not spec.stray_files
    assert [(c.name, c.label) for c in spec.test_cases] == [("abdomen_100", None)]
    assert load_dataset(folder / "dataset.json").cases == spec.cases  # the dataset.json path works too
    image, label = read_case(spec.cases[0], amos[1])
    assert image.GetSize() == label.GetSize() == (122, 101, 112)
    assert set(label_values(sitk.GetArrayViewFromImage(label))) <= {0, *amos[0].values()}
    # A mapping read from JSON has text keys; it maps the same.
    text_keys = read_case(spec.cases[0], {str(k): v for k, v in amos[1].items()})[1]
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(text_keys), sitk.GetArrayViewFromImage(label))


def test_load_json_list_with_dicom_case(json_spec, shared_data):
    assert [c.name for c in json_spec.cases] == ["abdomen_000", "chest_abdomen_dicom"]  # name derived from folder
    dicom = json_spec.cases[1]
    assert dicom.image.resolve() == (shared_data / DICOM).resolve() and dicom.image.is_dir()
    assert dicom.label.resolve() == (shared_data / DICOM_LABELS).resolve()
    assert json_spec.file_ending == ".nii.gz" and len(json_spec.labels) == 15


def test_load_csv_list(tmp_path, shared_data, amos):
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["name", "image", "label"])
        writer.writerow(["abdomen_000", shared_data / CT, shared_data / CT_LABELS])
        writer.writerow(["dicom_000", os.path.relpath(shared_data / DICOM, tmp_path), shared_data / DICOM_LABELS])
    spec = load_dataset(path, labels=amos[0])
    assert [c.name for c in spec.cases] == ["abdomen_000", "dicom_000"]
    assert spec.cases[1].image.resolve() == (shared_data / DICOM).resolve() and spec.labels == amos[0]
    # Without labels, the classes are the values found in the label maps (after the mapping), named class_<value>.
    derived = load_dataset(path, label_mapping=amos[1])
    assert set(derived.labels) == {f"class_{v}" for v in derived.labels.values()}
    assert LIVER_AMOS in derived.labels.values() and set(derived.labels.values()) <= set(range(1, 16))


def test_dataset_description_errors(tmp_path):
    folder = tmp_path / "Dataset002_Bad"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    with pytest.raises(InputError, match="no dataset.json"):
        load_dataset(folder)

    def write(**meta):
        base = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}
        (folder / "dataset.json").write_text(json.dumps({**base, **meta}))

    write(labels={"background": 0, "whole_tumor": [1, 2], "core": [2]})
    with pytest.raises(InputError, match="region-based labels.*not support regions"):
        load_dataset(folder)
    write(channel_names={"0": "T2"})
    with pytest.raises(InputError, match="'T2'.*CT in Hounsfield units only"):
        load_dataset(folder)
    write(channel_names={"0": "CT", "1": "PET"})
    with pytest.raises(InputError, match="single-channel CT"):
        load_dataset(folder)
    write(labels={"background": 0, "liver": 1, "spleen": 1})
    with pytest.raises(InputError, match="both have the label value 1"):
        load_dataset(folder)
    (tmp_path / "list.csv").write_text("path,mask\na.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match="columns image,label"):
        load_dataset(tmp_path / "list.csv")
    with pytest.raises(InputError, match="region-based"):
        parse_labels({"a": [1]}, "x")


@pytest.mark.parametrize(("name", "problem"), [
    ("liver\nspleen", "non-printable character U\\+000A"),
    ("l" * 200, "200 characters, more than the 64 allowed"),
    ("liver\u202e", "non-printable character U\\+202E"),
])
def test_class_names_a_model_file_cannot_hold_are_refused_when_the_dataset_is_read(tmp_path, name, problem):
    """Issue 23: refused here, not when the model is saved after the first epoch (``classes.check_class``)."""
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, name: 1}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=f"cannot go into a model file \\(.*{problem}\\).*rename the class"):
        load_dataset(tmp_path)
    with pytest.raises(InputError, match=problem):
        parse_labels({name: 1}, "the labels given")
    assert parse_labels({"l" * 64: 1, "Leber (Hépar)": 2}, "the labels given") == {"l" * 64: 1, "Leber (Hépar)": 2}


# --------------------------------------------------------------------------------------------------------------
# checks


def test_check_passes_on_good_dataset_including_las_label(json_spec, amos):
    progress = []
    problems = check_dataset(json_spec, label_mapping=amos[1], progress=lambda *a: progress.append(a))
    assert problems == [], format_report(problems)
    assert [p[:2] for p in progress] == [(1, 2), (2, 2)]
    assert format_report([]) == "The dataset check found no problems."
    # Without the mapping, the TotalSegmentator ids (e.g. 5, liver) are not among the declared AMOS values.
    abdomen_only = replace(json_spec, cases=json_spec.cases[:1])
    assert [p.case for p in check_dataset(abdomen_only)] == ["abdomen_000"]


def _write(array: np.ndarray, reference: sitk.Image, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))
    return path


def test_check_reports_every_problem(tmp_path, shared_data):
    """One broken nnU-Net folder with one problem per case; all of them end up in one report."""
    names = [line.split("\t") for line in (shared_data / "totalseg_v2_classes.tsv").read_text().splitlines()]
    totalseg = {name: int(value) for value, name in names if value.strip().isdigit()}
    folder = _nnunet_folder(tmp_path / "Dataset003_Broken", shared_data, totalseg)
    images, labels = folder / "imagesTr", folder / "labelsTr"
    ct, ct_labels = read_image(shared_data / CT), sitk.ReadImage(str(shared_data / CT_LABELS))
    label_array = sitk.GetArrayFromImage(ct_labels)
    for i in (1, 2, 3, 5, 6):
        (images / f"abdomen_00{i}_0000.nii.gz").symlink_to(shared_data / CT)
    # 001: no label map. 002: a value (200) that the labels do not declare.
    _write(np.where(label_array == 5, 200, label_array).astype(np.uint8), ct_labels, labels / "abdomen_002.nii.gz")
    # 003: the label map of the other case (another grid).
    (labels / "abdomen_003.nii.gz").symlink_to(shared_data / DICOM_LABELS)
    # 004: a 2D image (one slice) with a label map.
    sitk.WriteImage(ct[:, :, 50], str(images / "abdomen_004_0000.nii.gz"))
    (labels / "abdomen_004.nii.gz").symlink_to(shared_data / CT_LABELS)
    # 005: an unreadable label map. 006: a float label map.
    (labels / "abdomen_005.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    _write(label_array.astype(np.float32), ct_labels, labels / "abdomen_006.nii.gz")
    # 007: a label map without an image; and two files that belong to no case.
    (labels / "abdomen_007.nii.gz").symlink_to(shared_data / CT_LABELS)
    (labels / "notes.txt").write_text("labels done by hand")
    (images / "abdomen_000_0001.nii.gz").symlink_to(shared_data / CT)

    spec = load_dataset(folder)
    problems = check_dataset(spec)
    by_case: dict[str, str] = {}
    for item in problems:
        by_case[item.case] = by_case.get(item.case, "") + item.problem
    assert "abdomen_000" not in by_case  # the intact case passes
    assert "No label map" in by_case["abdomen_001"]
    assert "200" in by_case["abdomen_002"] and "do not declare" in by_case["abdomen_002"]
    assert "not on the image's grid" in by_case["abdomen_003"] and "512 x 512 x 20" in by_case["abdomen_003"]
    assert "2D image" in by_case["abdomen_004"]
    assert "could not be read" in by_case["abdomen_005"]
    assert "not integer-typed" in by_case["abdomen_006"]
    assert "is missing" in by_case["abdomen_007"] and "has no image" in by_case["abdomen_007"]
    assert "not a label map" in by_case[str(Path("labelsTr") / "notes.txt")]
    assert "single CT channel" in by_case[str(Path("imagesTr") / "abdomen_000_0001.nii.gz")]
    assert len(by_case) == 9

    report = format_report(problems)
    for case in by_case:
        assert f"\n{case}:\n" in report
    assert report.startswith(f"The dataset check found {len(problems)} problems in 9 cases")
    assert " ".join(report.split()).endswith(
        "or run with --skip-bad-cases to leave the cases listed out of training (stray files are then ignored)."
    )
    kept = without_bad_cases(spec, problems)
    assert [c.name for c in kept.cases] == ["abdomen_000"] and not kept.stray_files


def test_format_report_groups_by_case():
    report = format_report([CaseProblem("a", "first"), CaseProblem("b", "second"), CaseProblem("a", "third")])
    assert report.index("a:\n  - first\n  - third") < report.index("b:\n  - second")


# --------------------------------------------------------------------------------------------------------------
# fingerprint and plans


def test_fingerprint_and_plans(json_spec, amos):
    fp = compute_fingerprint(json_spec, label_mapping=amos[1])
    assert fp.num_cases == 2
    # (z, y, x) medians of (3, 3, 3) mm and (2, 0.977, 0.977) mm; shapes (112, 101, 122) and (20, 512, 512).
    assert fp.median_spacing_zyx == pytest.approx((2.5, (3 + 0.9765625) / 2, (3 + 0.9765625) / 2))
    assert fp.median_shape_zyx == pytest.approx((66, 306.5, 317))
    assert -1200 <= fp.foreground_percentile_00_5 < fp.foreground_mean < fp.foreground_percentile_99_5 <= 3400
    assert -200 < fp.foreground_mean < 300 and 10 < fp.foreground_std < 500  # soft-tissue organs
    abdomen_only = replace(json_spec, cases=json_spec.cases[:1])
    once = compute_fingerprint(abdomen_only, label_mapping=amos[1])
    assert compute_fingerprint(abdomen_only, label_mapping=amos[1]) == once  # seeded: reproducible
    assert once.median_spacing_zyx == (3.0, 3.0, 3.0) and once.median_shape_zyx == (112, 101, 122)
    assert Fingerprint.from_dict(fp.to_dict()) == fp

    plans = plans_from_fingerprint(fp, spacing=(3.0, 3.0, 3.0))
    assert plans.spacing == (3.0, 3.0, 3.0)
    assert all(s % 16 == 0 and s >= 32 for s in plans.patch_size) and np.prod(plans.patch_size) <= 96**3
    assert plans.intensity.clip_low == fp.foreground_percentile_00_5
    assert plans.intensity.clip_high == fp.foreground_percentile_99_5
    assert (plans.intensity.mean, plans.intensity.std) == (fp.foreground_mean, fp.foreground_std)
    assert plans_from_fingerprint(fp).spacing == fp.median_spacing_zyx
    assert plans_from_fingerprint(fp, patch_size=(32, 64, 64)).patch_size == (32, 64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        plans_from_fingerprint(fp, patch_size=(40, 64, 64))


def test_patch_size_follows_median_shape_and_cap():
    fp = Fingerprint((3.0, 3.0, 3.0), -1000.0, 300.0, 50.0, 100.0, (112.0, 101.0, 122.0), 1)
    patch = plans_from_fingerprint(fp).patch_size
    assert np.prod(patch) <= 96**3 and all(s % 16 == 0 for s in patch)
    assert plans_from_fingerprint(fp, max_patch_voxels=10**9).patch_size == (112, 112, 128)  # rounded up
    small = Fingerprint((3.0, 3.0, 3.0), -1000.0, 300.0, 50.0, 100.0, (10.0, 200.0, 200.0), 1)
    assert plans_from_fingerprint(small).patch_size[0] == 32  # at least 32


# --------------------------------------------------------------------------------------------------------------
# preprocessing cache


@pytest.fixture
def prepare_calls(monkeypatch) -> list[str]:
    """Counts the preprocessing done (calls of ``prepare`` from the cache module)."""
    calls: list[str] = []

    def counting_prepare(image, plans):
        calls.append("prepare")
        return prepare(image, plans)

    monkeypatch.setattr(cache_module, "prepare", counting_prepare)
    return calls


def test_preprocess_cases_on_model_grid(json_spec, amos, tmp_path, shared_data, prepare_calls):
    class_values = list(range(1, 16))  # AMOS ids 1..15 -> class indices 1..15
    abdomen, dicom = preprocess_cases(json_spec, PLANS_3MM, class_values, tmp_path, label_mapping=amos[1])
    assert len(prepare_calls) == 2

    # The 3 mm case is already on the model grid: image as inference prepares it, labels = the mapped label map.
    image = read_image(shared_data / CT)
    assert abdomen.image.dtype == np.float32 and abdomen.labels.dtype == np.uint8
    assert abdomen.image.shape == abdomen.labels.shape == (112, 101, 122) and abdomen.spacing_zyx == (3.0, 3.0, 3.0)
    np.testing.assert_array_equal(abdomen.image, prepare(image, PLANS_3MM).array)
    expected = apply_label_mapping(
        sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(str(shared_data / CT_LABELS)))), amos[1]
    )
    np.testing.assert_array_equal(abdomen.labels, expected)
    assert isinstance(abdomen.image, np.memmap) and not abdomen.image.flags.writeable

    # The DICOM case: compare with an independent nearest-neighbour lookup of the LAS label map, voxel centre by
    # voxel centre, in physical coordinates (numpy only, no SimpleITK resampling).
    grid = model_grid_for(to_canonical(read_image(shared_data / DICOM)), PLANS_3MM.spacing)
    assert dicom.labels.shape == grid.GetSize()[::-1] == (13, 167, 167)
    raw = sitk.ReadImage(str(shared_data / DICOM_LABELS))
    z, y, x = np.meshgrid(*(np.arange(n) for n in dicom.labels.shape), indexing="ij")
    index_xyz = np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(float)
    points = np.asarray(grid.GetOrigin())[:, None] + np.reshape(grid.GetDirection(), (3, 3)) @ (
        index_xyz * np.asarray(grid.GetSpacing())[:, None]
    )
    raw_matrix = np.reshape(raw.GetDirection(), (3, 3)) * np.asarray(raw.GetSpacing())
    continuous = np.linalg.solve(raw_matrix, points - np.asarray(raw.GetOrigin())[:, None])
    # Round half up, as ITK's nearest-neighbour interpolator does: at 3 mm from 2 mm slices every other model voxel
    # centre lies exactly between two label slices.
    raw_index = np.floor(continuous + 0.5).astype(int)
    inside = np.all((raw_index >= 0) & (raw_index < np.asarray(raw.GetSize())[:, None]), axis=0)
    raw_array = sitk.GetArrayViewFromImage(raw)  # (z, y, x) as stored, i.e. y runs anterior -> posterior flipped
    values = np.zeros(index_xyz.shape[1], dtype=np.int64)
    values[inside] = raw_array[raw_index[2, inside], raw_index[1, inside], raw_index[0, inside]]
    independent = apply_label_mapping(values, amos[1]).reshape(dicom.labels.shape)
    assert np.mean(independent == dicom.labels) > 0.9995  # a voxel centre within rounding of a tie may differ
    liver = dicom.labels == LIVER_AMOS
    assert liver.sum() > 1000 and np.mean(independent[liver] == LIVER_AMOS) > 0.99

    # Foreground samples: (K, 3) coordinates of voxels of that class, for each class present.
    assert set(dicom.foreground) == set(label_values(dicom.labels)) - {0}
    for index, coords in dicom.foreground.items():
        assert coords.dtype == np.int32 and coords.shape[1] == 3
        assert np.all(dicom.labels[tuple(coords.T)] == index)


def test_cache_reused_and_invalidated(tmp_path, shared_data, amos, prepare_calls):
    # A copied label map, so that touching it changes its modification time.
    (tmp_path / "data").mkdir()
    label = tmp_path / "data" / "labels.nii.gz"
    label.write_bytes((shared_data / CT_LABELS).read_bytes())
    spec = DatasetSpec(tmp_path / "data", [Case("abdomen_000", shared_data / CT, label)], amos[0], ".nii.gz", [])
    cache = tmp_path / "cache"
    first = preprocess_cases(spec, PLANS_3MM, [LIVER_AMOS], cache, label_mapping=amos[1])[0]
    entries = sorted(p.name for p in cache.iterdir())
    assert len(prepare_calls) == 1 and len(entries) == 1 and entries[0].startswith("abdomen_000-")
    assert set(label_values(first.labels)) == {0, 1}  # only the liver: class index 1
    files = sorted((cache / entries[0]).iterdir())
    mtimes = [f.stat().st_mtime_ns for f in files]

    second = preprocess_cases(spec, PLANS_3MM, [LIVER_AMOS], cache, label_mapping=amos[1])[0]
    assert len(prepare_calls) == 1  # nothing preprocessed again
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    np.testing.assert_array_equal(second.labels, first.labels)
    np.testing.assert_array_equal(second.image, first.image)

    other = Plans(spacing=(4.0, 4.0, 4.0), patch_size=PLANS_3MM.patch_size)
    coarse = preprocess_cases(spec, other, [LIVER_AMOS], cache, label_mapping=amos[1])[0]
    assert len(prepare_calls) == 2 and coarse.image.shape == (84, 76, 92) and coarse.spacing_zyx == (4.0, 4.0, 4.0)
    preprocess_cases(spec, PLANS_3MM, [LIVER_AMOS, 1], cache, label_mapping=amos[1])  # other classes
    assert len(prepare_calls) == 3
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the label map changed
    preprocess_cases(spec, PLANS_3MM, [LIVER_AMOS], cache, label_mapping=amos[1])
    assert len(prepare_calls) == 4 and len(list(cache.iterdir())) == 4


def test_interrupted_write_is_not_trusted(tmp_path, shared_data, amos, monkeypatch):
    spec = DatasetSpec(tmp_path, [Case("abdomen_000", shared_data / CT, shared_data / CT_LABELS)], amos[0], "", [])
    original_savez = np.savez

    def failing_savez(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped between writing the arrays

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        preprocess_cases(spec, PLANS_3MM, [LIVER_AMOS], tmp_path / "cache", label_mapping=amos[1])
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, complete or not

    # A temporary folder left by a killed process (kill -9 runs no cleanup) is neither read nor in the way.
    leftover = tmp_path / "cache" / ".tmp-abdomen_000-0123456789abcdef-deadbeef"
    leftover.mkdir()
    (leftover / "image.npy").write_bytes(b"half written")
    monkeypatch.setattr(np, "savez", original_savez)
    case = preprocess_cases(spec, PLANS_3MM, [LIVER_AMOS], tmp_path / "cache", label_mapping=amos[1])[0]
    assert case.image.shape == (112, 101, 122) and LIVER_AMOS not in case.foreground and 1 in case.foreground


@pytest.mark.parametrize("layout", ["nnunet folder", "json list"])
def test_dataset_json_nested_too_deep_is_refused_naming_the_file(tmp_path, layout):
    """Python's json recursion ended in a RecursionError (an internal error); the depth is bounded first."""
    hostile = "[" * 100_000 + "]" * 100_000
    if layout == "nnunet folder":
        (tmp_path / "dataset.json").write_text(hostile)
        path, source = tmp_path, tmp_path / "dataset.json"
    else:
        path = source = tmp_path / "cases.json"
        source.write_text(hostile)
    with pytest.raises(InputError, match="is not valid JSON .*nested deeper") as info:
        load_dataset(path)
    assert str(source) in str(info.value)
