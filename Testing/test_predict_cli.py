"""`maskmed predict` end to end, and one test per bad input: a clear message, a non-zero exit, no output left."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from factories import tiny_model_file
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from maskmed_core.cli import main
from maskmed_core.events import PREDICT_STAGES, ExitCode, from_json


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.maskmed")


@pytest.fixture(scope="module")
def ct_file(demo_data, tmp_path_factory):
    image = sitk.ReadImage(str(demo_data.ct))[30:94, 20:80, 60:100]
    path = tmp_path_factory.mktemp("ct") / "crop.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def run_cli(capsys, *args):
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, out_dir, expected_code, pattern, *args):
    code, out, err = run_cli(capsys, *args, "-o", out_dir)
    assert code == expected_code, err
    assert pattern in err, err
    assert not out_dir.exists(), "an output file or folder was left behind"


def test_predict_writes_outputs_and_json_lines(capsys, model_path, ct_file, tmp_path):
    out_dir = tmp_path / "out"
    code, out, _ = run_cli(
        capsys, ct_file, "-o", out_dir, "--model", model_path, "--format", "seg.nrrd", "--save-result",
        "--json", "--query-threshold", "0", "--class-threshold", "0.05",
    )
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert all(from_json(line) is not None for line in out.splitlines()), "a line outside the event schema"
    assert events[-1] == {"event": "done", "exit_code": 0}
    assert any(e["event"] == "progress" and e["stage"] == "inference" for e in events)
    assert {e["stage"] for e in events if e["event"] == "progress"} == set(PREDICT_STAGES)
    (output,) = [e for e in events if e["event"] == "output"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["crop.maskmed-result", "crop.seg.nrrd"]
    assert [c["name"] for c in output["classes"]] == ["spleen", "right kidney", "left kidney"]


def test_a_folder_named_like_an_output_is_a_usage_error_and_nothing_is_written(capsys, model_path, ct_file, tmp_path):
    out_dir = tmp_path / "out"
    in_the_way = out_dir / "crop.maskmed-result"
    in_the_way.mkdir(parents=True)
    (in_the_way / "kept.txt").write_text("the user's")

    code, _, err = run_cli(capsys, ct_file, "-o", out_dir, "--model", model_path, "--save-result")

    assert code == ExitCode.USAGE, err  # the user's to move, not a failure of the system (exit 1)
    assert f"Cannot write {in_the_way}: a folder has that name" in err and "Traceback" not in err, err
    assert "inference" not in err  # found before the network ran, not after
    assert sorted(p.name for p in out_dir.iterdir()) == ["crop.maskmed-result"]  # no label map without its result
    assert (in_the_way / "kept.txt").read_text() == "the user's"


def test_probability_maps_are_uint8_on_the_input_grid(capsys, model_path, ct_file, tmp_path):
    code, _, err = run_cli(capsys, ct_file, "-o", tmp_path / "out", "--model", model_path, "--probabilities")
    assert code == 0, err
    maps = sorted((tmp_path / "out" / "crop_probabilities").iterdir())
    assert [p.name for p in maps] == ["1_spleen.nii.gz", "2_right_kidney.nii.gz", "3_left_kidney.nii.gz"]
    image, reference = sitk.ReadImage(str(maps[0])), sitk.ReadImage(str(ct_file))
    assert image.GetPixelID() == sitk.sitkUInt8 and image.GetSize() == reference.GetSize()
    assert image.GetOrigin() == reference.GetOrigin()


def test_predict_folder_of_files(capsys, model_path, ct_file, tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(ct_file, folder / "a.nii.gz")
    shutil.copy(ct_file, folder / "b.nii.gz")
    code, _, err = run_cli(capsys, folder, "-o", tmp_path / "out", "--model", model_path, "--format", "nrrd")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nrrd", "b.nrrd"]


def test_missing_path(capsys, model_path, tmp_path):
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "does not exist",
                   tmp_path / "nope.nii.gz", "--model", model_path)


def test_truncated_file(capsys, model_path, ct_file, tmp_path):
    bad = tmp_path / "truncated.nii.gz"
    data = ct_file.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "truncated", bad, "--model", model_path)


def test_unreadable_file(capsys, model_path, tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("not an image")
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "notes.nii.gz", bad, "--model", model_path)


def test_2d_image(capsys, model_path, tmp_path):
    path = tmp_path / "slice.nii.gz"
    array = np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "2D image", path, "--model", model_path)


def test_4d_image(capsys, model_path, tmp_path):
    path = tmp_path / "series.nii.gz"
    array = np.zeros((2, 8, 8, 8), dtype=np.int16) + np.arange(8, dtype=np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(path))
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "4D", path, "--model", model_path)


def test_multi_component_image(capsys, model_path, tmp_path):
    path = tmp_path / "rgb.nrrd"
    array = np.random.default_rng(0).integers(0, 255, size=(8, 8, 8, 3)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(path))
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "component", path, "--model", model_path)


def test_constant_volume(capsys, model_path, tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 20, 20), -1000, dtype=np.int16)), str(path))
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "constant", path, "--model", model_path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_infinite_voxels(capsys, model_path, tmp_path, bad_value):
    array = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32) * 500
    array[3, 4, 5] = bad_value
    path = tmp_path / "bad.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    pattern = "NaN" if np.isnan(bad_value) else "infinite"
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, pattern, path, "--model", model_path)


def test_mr_volume_gives_a_warning_naming_the_range(capsys, model_path, shared_data, tmp_path):
    code, _, err = run_cli(capsys, shared_data / "mr" / "example_mr.nii.gz", "-o", tmp_path / "out",
                           "--model", model_path)
    assert code == 0
    assert "warning" in err and "CT" in err and "range" in err


def test_extreme_anisotropy(capsys, model_path, tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(12, 64, 64)).astype(np.float32) * 400)
    image.SetSpacing((0.5, 0.5, 10.0))
    path = tmp_path / "thick.nii.gz"
    sitk.WriteImage(image, str(path))
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "10.00 mm", path, "--model", model_path)


def test_volume_too_large_for_memory_is_refused_with_numbers(capsys, model_path, ct_file, tmp_path, monkeypatch):
    monkeypatch.setattr("maskmed_core.inference.checks.available_memory_bytes", lambda: 10 * 2**20)
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_INPUT, "GiB is available", ct_file, "--model", model_path)


def test_corrupted_model_file(capsys, model_path, ct_file, tmp_path):
    broken = tmp_path / "broken.maskmed"
    data = model_path.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_MODEL, "broken.maskmed", ct_file, "--model", broken)


def test_model_file_of_unknown_format_version(capsys, model_path, ct_file, tmp_path):
    with safe_open(str(model_path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata["format_version"] = "7"
    newer = tmp_path / "newer.maskmed"
    save_file(load_file(str(model_path)), str(newer), metadata=metadata)
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_MODEL, "update maskmed_core", ct_file, "--model", newer)


def test_without_model_the_bundled_default_segments_amos_classes(capsys, ct_file, tmp_path):
    code, _, err = run_cli(capsys, ct_file, "-o", tmp_path / "out")
    assert code == 0, err
    output = tmp_path / "out" / "crop.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert labels.shape == sitk.ReadImage(str(ct_file)).GetSize()[::-1]
    assert set(np.unique(labels).tolist()) - {0} <= set(range(1, 16)) and labels.any()


def test_missing_default_model_is_reported(capsys, ct_file, tmp_path, monkeypatch):
    monkeypatch.setattr("maskmed_core.bundled.DEFAULT_MODEL", tmp_path / "absent.maskmed")
    assert_refused(capsys, tmp_path / "out", ExitCode.BAD_MODEL, "no default model", ct_file)


def test_threshold_out_of_range(capsys, model_path, ct_file, tmp_path):
    assert_refused(capsys, tmp_path / "out", ExitCode.USAGE, "between 0 and 1", ct_file, "--model", model_path,
                   "--class-threshold", "1.5")
