"""The bundled default model and `maskmed demo` (on a crop of the bundled CT, to stay fast)."""

from __future__ import annotations

import re

import pytest

from maskmed_core.bundled import DEFAULT_MODEL
from maskmed_core.checkpoint import load_model_file
from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.cli import main

# X0 X1 Y0 Y1 Z0 Z1 (voxels of the 122 x 101 x 112 demo CT): both kidneys, liver, spleen, aorta, vena cava.
KIDNEY_CROP = ["10", "110", "10", "90", "56", "112"]


def test_default_model_is_bundled_small_enough_with_amos_classes_colours_and_terminology():
    assert DEFAULT_MODEL.is_file(), "maskmed_core/resources/default.maskmed is missing"
    assert DEFAULT_MODEL.stat().st_size <= 50 * 2**20
    model = load_model_file(DEFAULT_MODEL)
    assert [c.name for c in model.classes] == [c.name for c in AMOS15_CLASSES]
    assert [c.label for c in model.classes] == list(range(1, 16))
    assert all(c.terminology is not None and len(c.color) == 3 for c in model.classes)
    assert model.plans.spacing == (3.0, 3.0, 3.0) and model.plans.modality == "CT"


def test_demo_on_a_crop_writes_the_three_files_and_reports_agreement_with_totalsegmentator(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "-o", str(output), "--device", "cpu", "--case", "abdomen", "--crop", *KIDNEY_CROP]) == 0
    printed = capsys.readouterr().out
    assert "agreement with TotalSegmentator" in printed and "trained on" in printed
    for name in ("demo_ct.nii.gz", "demo_ct.seg.nrrd", "demo_ct.png"):
        assert (output / name).stat().st_size > 0, name
    assert (output / "demo_ct.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dice = {name.strip(): float(score) for name, score in re.findall(r"^  (\w[\w /]+?)\s+(\d\.\d{3})$", printed, re.M)}
    # The shipped model must find the kidneys of a case it was trained on (0.93 on the whole CT when shipped).
    assert dice["right kidney"] > 0.7 and dice["left kidney"] > 0.7
    assert re.search(r"^time: \d+\.\d s", printed, re.M)


def test_a_demo_that_fails_writing_its_picture_leaves_an_earlier_demos_files_as_they_were(tmp_path, capsys,
                                                                                           monkeypatch):
    output = tmp_path / "demo"
    output.mkdir()
    earlier = {name: f"an earlier demo's {name}".encode() for name in ("demo_ct.nii.gz", "demo_ct.seg.nrrd",
                                                                      "demo_ct.png")}
    for name, content in earlier.items():
        (output / name).write_bytes(content)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", disk_full)
    assert main(["demo", "-o", str(output), "--device", "cpu", "--case", "abdomen", "--crop", *KIDNEY_CROP]) != 0
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in output.iterdir()} == earlier  # the label files too; no temporary left


@pytest.mark.slow
def test_demo_on_the_held_out_ct_says_the_model_never_saw_it(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "-o", str(output), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "s0009_ct.nii.gz" in printed and "corrected by hand" in printed
    assert "held out: the default model never saw it" in printed
    assert re.search(r"^  mean \(classes present\)\s+\d\.\d{3}$", printed, re.M)
    assert (output / "demo_ct.seg.nrrd").stat().st_size > 0


@pytest.mark.parametrize("crop", [["0", "200", "0", "50", "0", "50"], ["40", "20", "0", "50", "0", "50"]])
def test_demo_refuses_a_crop_outside_the_ct(tmp_path, capsys, crop):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--case", "abdomen", "--crop", *crop]) == 2
    assert "not a box inside the demo CT" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_without_a_model_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("maskmed_core.bundled.DEFAULT_MODEL", tmp_path / "absent.maskmed")
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 4
    assert "no model at" in capsys.readouterr().err
