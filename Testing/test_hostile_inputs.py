"""Hostile and broken inputs (issue 12): one test per class of problem, each made inside the test.

Every CLI case runs `maskmed predict` in a child process and asserts the exit code, the message, the child's
peak memory (``os.wait4`` gives that child's own ru_maxrss) and that no file exists under a final name (nor a
temporary one). The table of cases is Testing/hostile_inputs.md.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from factories import HANG_SECONDS, tiny_model, tiny_model_file
from safetensors.torch import load_file, save_file

from maskmed_core.checkpoint import ModelFileError, load_model_file, save_model_file
from maskmed_core.classes import AMOS15_CLASSES, SegmentClass
from maskmed_core.inference.result import Grid, ResultFileError, SegmentationResult
from maskmed_core.io.errors import InputError
from maskmed_core.model import MaskMed, preset
from maskmed_core.model.maskmed import count_parameters
from maskmed_core.plans import Plans
from maskmed_core.predict_command import ExitCode
from maskmed_core.training.state import TrainingState, TrainingStateError, check_resumable, load_state, save_state

REPO = Path(__file__).resolve().parents[1]
# A refusal must cost about what starting Python with torch and SimpleITK costs (~350 MB here), far below the
# gigabytes the hostile headers ask for (2 GiB and more).
REFUSAL_PEAK_MB = 800


@dataclass
class Run:
    code: int
    out: str
    err: str
    peak_mb: float
    seconds: float

    @property
    def messages(self) -> str:
        return self.out + self.err


# The child is started by this small launcher, which reports its own child's ru_maxrss (os.wait4). Measuring the
# child directly would be wrong: a process forked from this test process (torch and a model loaded) counts the
# parent's resident pages until its exec. Signals sent to the launcher are passed on.
_LAUNCHER = """
import os, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)  # inherited ignored when the suite runs in the background (`&`)
child = subprocess.Popen(sys.argv[2:])
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, lambda received, frame: child.send_signal(received))
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(args: list[str], tmp_path: Path, env: dict[str, str] | None = None, preexec_fn=None,
              on_start=None, module: bool = True, timeout: float | None = None) -> Run:
    """Run ``python -m maskmed_core.cli ARGS`` (``python ARGS`` without ``module``) and measure its peak RSS."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    out_path, err_path, peak_path = tmp_path / "child.out", tmp_path / "child.err", tmp_path / "child.peak"
    command = [sys.executable, "-m", "maskmed_core.cli", *args] if module else [sys.executable, *args]
    launcher = [sys.executable, "-c", _LAUNCHER, str(peak_path), *command]
    start = time.perf_counter()
    if on_start is None:  # pipes: not limited by a file size limit the test sets on the child
        process = subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=environment, cwd=tmp_path, preexec_fn=preexec_fn)
        try:
            out_text, err_text = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    else:  # files: on_start watches the child's progress while it runs
        with open(out_path, "w") as out, open(err_path, "w") as err:
            process = subprocess.Popen(launcher, stdout=out, stderr=err, env=environment, cwd=tmp_path,
                                       preexec_fn=preexec_fn)
            on_start(process, out_path)
            process.wait()
        out_text, err_text = out_path.read_text(), err_path.read_text()
    return Run(process.returncode, out_text, err_text, int(peak_path.read_text()) / 1024,
               time.perf_counter() - start)


def predict(tmp_path: Path, inputs: list[Path], model: Path, out: Path | None = None, extra: tuple = (),
            **kwargs) -> Run:
    out = out if out is not None else tmp_path / "out"
    return run_child(["predict", *map(str, inputs), "--model", str(model), "-o", str(out), *extra], tmp_path,
                     **kwargs)


def assert_refused(run: Run, code: int, *phrases: str, out: Path | None = None) -> None:
    print(f"peak RSS of the refusal: {run.peak_mb:.0f} MB")  # shown with pytest -s (the figures in hostile_inputs.md)
    assert run.code == code, run.messages
    for phrase in phrases:
        assert phrase in run.messages, (phrase, run.messages)
    assert "Traceback" not in run.messages, run.messages
    assert run.peak_mb < REFUSAL_PEAK_MB, f"peak RSS {run.peak_mb:.0f} MB"
    if out is not None and out.exists():
        assert not any(p.is_file() for p in out.rglob("*")), sorted(out.rglob("*"))


# ---------------------------------------------------------------------------------------------------------------
# fixtures: a tiny model, a small synthetic CT, and ways to make hostile variants of them


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.maskmed")


def synthetic_ct(shape_zyx=(40, 64, 64), spacing=(3.0, 3.0, 3.0), dtype=np.int16) -> sitk.Image:
    """Air around a water-like cylinder with a denser blob: a CT-like volume (HU)."""
    z, y, x = np.indices(shape_zyx)
    cy, cx = shape_zyx[1] / 2, shape_zyx[2] / 2
    body = (y - cy) ** 2 + (x - cx) ** 2 < (0.4 * shape_zyx[1]) ** 2
    array = np.where(body, 40, -1000).astype(dtype)
    array[(z - shape_zyx[0] / 2) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 36] = 300
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(synthetic_ct(), str(path))
    return path


def rewrite_model(source: Path, target: Path, metadata_edit=None, tensor_edit=None) -> Path:
    """A copy of a model file with its metadata (dict of JSON strings) and/or tensors edited."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(source))
    if metadata_edit is not None:
        metadata_edit(metadata)
    if tensor_edit is not None:
        tensor_edit(tensors)
    save_file(tensors, str(target), metadata=metadata)
    return target


def edit_json(field: str, change):
    def edit(metadata):
        data = json.loads(metadata[field])
        change(data)
        metadata[field] = json.dumps(data)

    return edit


def nifti_bytes(image: sitk.Image, tmp_path: Path) -> bytearray:
    path = tmp_path / "plain.nii"
    sitk.WriteImage(image, str(path))
    return bytearray(path.read_bytes())


# ---------------------------------------------------------------------------------------------------------------
# untrusted text: a class name that would inject a field into the .seg.nrrd header


def test_class_name_with_header_injection_is_refused(model_path, ct_path, tmp_path):
    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", edit_json(
        "classes", lambda classes: classes[0].update(name="spleen\ndata file: /etc/passwd")))
    out = tmp_path / "out"
    run = predict(tmp_path, [ct_path], evil, out, ("--format", "seg.nrrd"))
    assert_refused(run, ExitCode.BAD_MODEL, "classes[0].name", "non-printable character U+000A", out=out)


@pytest.mark.parametrize(("field", "value", "phrase"), [
    ("name", "x" * 65, "more than the 64 allowed"),
    ("name", "liver\u202e", "non-printable"),  # a bidi override: shows another name than the bytes say
    ("terminology.type.meaning", "Liver~SCT^1^Evil", "not allowed here"),
    ("color", [255, 0, 256], "classes[0].color[2]: 256 is outside 0..255"),
    ("label", 70000, "classes[0].label: 70000 is outside 1..65535"),
])
def test_untrusted_class_text_and_values_are_checked_on_load(model_path, tmp_path, field, value, phrase):
    def change(classes):
        owner = classes[0]
        *parents, name = field.split(".")
        for parent in parents:
            owner = owner[parent]
        owner[name] = value

    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", edit_json("classes", change))
    with pytest.raises(ModelFileError, match="invalid model metadata") as info:
        load_model_file(evil)
    assert phrase in str(info.value)


def test_seg_nrrd_writer_refuses_header_text_from_python_callers(tmp_path):
    from maskmed_core.inference.writers import write_seg_nrrd

    labels = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    classes = [SegmentClass(1, "a\ndata file: /etc/passwd", (1, 2, 3))]
    with pytest.raises(ValueError, match="non-printable"):
        write_seg_nrrd(labels, classes, tmp_path / "x.seg.nrrd")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# memory decided from headers


def test_tiny_nifti_claiming_1024_cubed_is_refused_from_its_header(model_path, tmp_path):
    header = nifti_bytes(synthetic_ct((4, 4, 4)), tmp_path)[:352]
    struct.pack_into("<8h", header, 40, 3, 1024, 1024, 1024, 1, 1, 1, 1)
    path = tmp_path / "huge.nii"
    path.write_bytes(header)
    assert path.stat().st_size == 352
    out = tmp_path / "out"
    run = predict(tmp_path, [path], model_path, out, env={"MASKMED_MEMORY_BUDGET_MB": "1024"})
    assert_refused(run, ExitCode.BAD_INPUT, "1024 x 1024 x 1024", "memory budget", "Nothing was read", out=out)


def test_absurd_header_is_refused_with_the_default_budget(model_path, tmp_path):
    header = nifti_bytes(synthetic_ct((4, 4, 4)), tmp_path)[:352]
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    path = tmp_path / "absurd.nii"
    path.write_bytes(header)
    run = predict(tmp_path, [path], model_path)
    assert_refused(run, ExitCode.BAD_INPUT, "30000 x 30000 x 30000", "memory budget")


def test_gzip_bomb_is_refused_before_inflating(model_path, tmp_path):
    """A 1 MB .nii.gz whose header and stream hold 1 GiB of zeros: the header decides, nothing is inflated."""
    import zlib

    header = nifti_bytes(synthetic_ct((4, 4, 4)), tmp_path)[:352]
    struct.pack_into("<8h", header, 40, 3, 1024, 1024, 512, 1, 1, 1, 1)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    path = tmp_path / "bomb.nii.gz"
    zeros = bytes(1 << 24)
    with open(path, "wb") as file:
        file.write(compressor.compress(bytes(header)))
        for _ in range(64):  # 1 GiB
            file.write(compressor.compress(zeros))
        file.write(compressor.flush())
    assert path.stat().st_size < 2 << 20
    run = predict(tmp_path, [path], model_path, env={"MASKMED_MEMORY_BUDGET_MB": "512"})
    assert_refused(run, ExitCode.BAD_INPUT, "memory budget", "Nothing was read")


@pytest.mark.parametrize("budget", ["none set", "1 TiB"])
@pytest.mark.parametrize("kind", ["nifti", "nrrd"])
def test_tiny_file_claiming_2_gib_is_refused_whatever_memory_is_free(model_path, tmp_path, monkeypatch, kind, budget):
    """Issue 23: the refusal must not depend on the free memory. With no budget variable the budget is what is free
    now (the budget check or the file-size check refuses, depending on the machine); with a 1 TiB budget, as on a
    machine with that much free, the file size alone must refuse. Either way nothing is allocated."""
    monkeypatch.delenv("MASKMED_MEMORY_BUDGET_MB", raising=False)
    if kind == "nifti":
        header = nifti_bytes(synthetic_ct((4, 4, 4)), tmp_path)[:352]
        struct.pack_into("<8h", header, 40, 3, 1024, 1024, 1024, 1, 1, 1, 1)
        path, data, claim = tmp_path / "huge.nii", bytes(header), "NIfTI header announces 2,147,484,000 bytes"
    else:
        data = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nspacings: 1 1 1\nendian: little\n"
                b"encoding: raw\n\n")
        path, claim = tmp_path / "huge.nrrd", "NRRD header announces 2,147,483,648 bytes"
    path.write_bytes(data)
    assert path.stat().st_size <= 352
    env = {"MASKMED_MEMORY_BUDGET_MB": str(1 << 20)} if budget == "1 TiB" else {}
    run = predict(tmp_path, [path], model_path, env=env)
    assert_refused(run, ExitCode.BAD_INPUT)
    assert "nothing was read" in run.messages.lower()  # both refusals say so
    if budget == "1 TiB":
        assert claim in run.messages and "is truncated" in run.messages


def test_parameter_count_is_computed_without_building_the_network():
    configs = [preset("small", 15), preset("base", 15), preset("small", 3, patch_size=(32, 64, 64),
                                                                   spacing=(5.0, 1.0, 1.0))]
    conv = preset("small", 15)
    conv.head.kind = "conv"
    no_fsa = preset("small", 15)
    no_fsa.transformer.enabled = False
    for config in [*configs, conv, no_fsa, tiny_model().config]:
        assert config.estimated_parameters() == count_parameters(MaskMed(config))


def test_model_asking_for_a_huge_network_is_refused_before_allocating(ct_path, model_path, tmp_path, monkeypatch):
    """A 20 kB model file whose config asks for 2000 features per stage (about 2 G parameters)."""
    def huge(metadata):
        config = json.loads(metadata["config"])
        config["encoder"]["features"] = [2000] * 5
        metadata["config"] = json.dumps(config)

    evil = rewrite_model(model_path, tmp_path / "huge.maskmed", huge, lambda t: [t.pop(k) for k in list(t)[5:]])
    assert evil.stat().st_size < 64 << 10
    out = tmp_path / "out"
    run = predict(tmp_path, [ct_path], evil, out, env={"MASKMED_MEMORY_BUDGET_MB": "4096"})
    assert_refused(run, ExitCode.BAD_MODEL, "parameters", "memory budget", out=out)
    # Within a budget, the header alone still shows that the stored weights cannot be this network.
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", str(1 << 30))
    with pytest.raises(ModelFileError, match="do not match its network configuration"):
        load_model_file(evil)


def many_class_model_file(path: Path, num_classes: int) -> Path:
    """A tiny decoupled model (8 queries, 3 mm plans as ``tiny_model_file``) with ``num_classes`` classes."""
    config = tiny_model().config  # its 8 queries: the presets' query count grows with the classes
    config.num_classes = num_classes
    classes = [SegmentClass(label, f"structure {label}", (label % 256, label // 256, 128))
               for label in range(1, num_classes + 1)]
    plans = Plans(spacing=(3.0, 3.0, 3.0), patch_size=(32, 48, 48), overlap=0.5)
    return save_model_file(path, MaskMed(config), plans, classes)


def test_memory_estimate_counts_the_classes(tmp_path, monkeypatch):
    """Issue 23: a valid 1000-class model on a 273 x 273 x 300 CT allocated 11.1 GB and crashed after the inference;
    its (C, z, y, x) class maps are now in the estimate, so the run is refused from the header, with the numbers."""
    from maskmed_core.inference.checks import check_memory, estimate_memory_bytes

    image = sitk.Image([273, 273, 300], sitk.sitkInt16)
    image.SetSpacing((3.0, 3.0, 3.0))
    plans = Plans(spacing=(3.0, 3.0, 3.0), patch_size=(32, 48, 48), overlap=0.5)
    few, many = estimate_memory_bytes(image, plans, 8, 15), estimate_memory_bytes(image, plans, 8, 1000)
    assert many - few == 985 * 4 * 273 * 273 * 300  # one float32 map per class on the model grid
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "8192")
    check_memory(image, plans, 8, 15)
    with pytest.raises(InputError, match="1000 classes and 8 queries needs about 8[0-9]\\.[0-9] GiB"):
        check_memory(image, plans, 8, 1000)


def test_many_class_model_on_a_large_ct_is_refused_before_inference(tmp_path):
    model = many_class_model_file(tmp_path / "classes1000.maskmed", 1000)
    ct = tmp_path / "ct.nii.gz"
    image = sitk.Image([273, 273, 300], sitk.sitkInt16)
    image.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(image, str(ct))
    out = tmp_path / "out"
    run = predict(tmp_path, [ct], model, out, env={"MASKMED_MEMORY_BUDGET_MB": "8192"})
    assert_refused(run, ExitCode.BAD_INPUT, "273 x 273 x 300 volume with a model of 1000 classes",
                   "8.0 GiB is available", out=out)


# ---------------------------------------------------------------------------------------------------------------
# silent wrong results: refused instead


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels_in_nifti_are_refused(model_path, tmp_path, value):
    array = sitk.GetArrayFromImage(synthetic_ct(dtype=np.float32))
    array[5, 10:12, 10:12] = value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out"
    run = predict(tmp_path, [path], model_path, out)
    assert_refused(run, ExitCode.BAD_INPUT, "4 NaN" if np.isnan(value) else "4 infinite", out=out)


@pytest.mark.parametrize(("pixdim", "phrase"), [
    (0.0, "voxel size (pixdim) of 0 mm"),
    (float("nan"), "voxel size (pixdim) of nan mm"),
    (-2.0, "voxel size (pixdim) of -2 mm"),
    (1e-6, "voxel spacing of 1e-06 mm"),
])
def test_bad_voxel_size_is_refused(model_path, tmp_path, pixdim, phrase):
    data = nifti_bytes(synthetic_ct(), tmp_path)
    struct.pack_into("<f", data, 76 + 4, pixdim)  # pixdim[1]: x
    # Keep the sform out of the way, as ITK would otherwise take the spacing from it.
    struct.pack_into("<h", data, 254, 0)
    path = tmp_path / "bad_pixdim.nii"
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_refused(predict(tmp_path, [path], model_path, out), ExitCode.BAD_INPUT, phrase, out=out)


@pytest.mark.parametrize(("offset", "value", "phrase"), [
    (284, float("inf"), "orientation (qform/sform) holds impossible values"),  # srow_x[1]: ITK never returned
    (260, 1e30, "orientation (qform/sform) holds impossible values"),  # quatern_c: ITK never returned
    (0, 32767, "does not start with a valid NIfTI header"),  # sizeof_hdr: niftilib would guess the byte order
])
def test_nifti_orientation_that_hangs_itk_is_refused_first(model_path, tmp_path, offset, value, phrase):
    """Found by the fuzzer (test_fuzz_headers.py): these headers made ITK's ReadImageInformation run forever."""
    data = nifti_bytes(synthetic_ct(), tmp_path)
    struct.pack_into("<i" if offset == 0 else "<f", data, offset, value)
    path = tmp_path / "hangs.nii"
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    run = predict(tmp_path, [path], model_path, out, timeout=HANG_SECONDS)
    assert_refused(run, ExitCode.BAD_INPUT, phrase, out=out)


@pytest.mark.parametrize(("edit", "phrase"), [
    (lambda plans: plans.update(spacing=[1e6, 3.0, 3.0]), "plans.spacing[0]: 1e+06 is outside"),
    (lambda plans: plans["intensity"].update(std=0.0), "plans.intensity.std: 0 is outside"),
    (lambda plans: plans.update(overlap=0.999), "plans.overlap: 0.999 is outside [0, 0.9]"),
    (lambda plans: plans.update(patch_size=[32, 48, 50]), "not divisible by the network's total stride"),
    (lambda plans: plans.update(modality="MR"), "plans.modality: 'MR'; MaskMed normalises CT"),
    (lambda plans: plans.update(orientation="RAS"), "plans.orientation: 'RAS'; MaskMed's canonical orientation"),
])
def test_hostile_plans_are_refused(model_path, ct_path, tmp_path, edit, phrase):
    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", edit_json("plans", edit))
    out = tmp_path / "out"
    assert_refused(predict(tmp_path, [ct_path], evil, out), ExitCode.BAD_MODEL, phrase, out=out)


@pytest.mark.parametrize("axes", [[0, 0], [3], ["x"], [True], "zyx", [0.0]])
def test_hostile_mirror_axes_are_refused(model_path, tmp_path, axes):
    from maskmed_core.checkpoint import ModelFileError, load_model_file

    edit = edit_json("extra", lambda extra: extra.update(mirror_axes=axes))
    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", edit)
    with pytest.raises(ModelFileError, match="extra.mirror_axes.*expected distinct axes among 0, 1, 2"):
        load_model_file(evil)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(model_path, ct_path, tmp_path, value):
    def poison(tensors):
        key = sorted(tensors)[3]
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value

    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", tensor_edit=poison)
    out = tmp_path / "out"
    assert_refused(predict(tmp_path, [ct_path], evil, out), ExitCode.BAD_MODEL, "NaN or infinite weights", out=out)


def test_saving_nan_weights_is_refused(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        save_model_file(tmp_path / "x.maskmed", model, Plans(), list(AMOS15_CLASSES[:3]))
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# DICOM series geometry


@pytest.fixture
def dicom_copy(shared_data, tmp_path) -> Path:
    folder = tmp_path / "dicom"
    shutil.copytree(shared_data / "ct" / "chest_abdomen_dicom", folder)
    return folder


def test_dicom_series_with_a_missing_slice_is_refused(model_path, dicom_copy, tmp_path):
    (dicom_copy / "slice10.dcm").unlink()
    out = tmp_path / "out"
    run = predict(tmp_path, [dicom_copy], model_path, out)
    assert_refused(run, ExitCode.BAD_INPUT, "has a gap of 4.00 mm between", "slice09.dcm", "slice11.dcm",
                   "about 1 slice(s) are missing", out=out)


def test_dicom_series_with_a_duplicate_position_is_refused(model_path, dicom_copy, tmp_path):
    shutil.copy(dicom_copy / "slice05.dcm", dicom_copy / "slice05_copy.dcm")  # a second file at one position
    out = tmp_path / "out"
    run = predict(tmp_path, [dicom_copy], model_path, out)
    assert_refused(run, ExitCode.BAD_INPUT, "at a position another slice already has", "slice05", out=out)


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_dicom_folder_with_broken_links_is_refused(model_path, dicom_copy, tmp_path, kind):
    link = dicom_copy / "slice21.dcm"
    link.symlink_to(tmp_path / "gone.dcm" if kind == "dangling" else link)
    out = tmp_path / "out"
    run = predict(tmp_path, [dicom_copy], model_path, out)
    phrase = "slice21.dcm (leads nowhere)" if kind == "dangling" else "slice21.dcm (a link loop)"
    assert_refused(run, ExitCode.BAD_INPUT, "links that cannot be followed", phrase, out=out)


def test_uneven_dicom_spacing_is_refused(dicom_copy):
    """The last slice moved by 40 % of the slice gap (its position string patched in place, same length)."""
    from maskmed_core.io.reading import read_image

    def position(name: str) -> str:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(dicom_copy / name))
        reader.ReadImageInformation()
        return reader.GetMetaData("0020|0032")

    last, before = position("slice20.dcm"), position("slice19.dcm")
    z_last, z_before = float(last.split("\\")[2]), float(before.split("\\")[2])
    moved_z = f"{z_last + 0.4 * (z_last - z_before):.1f}"
    old_z = last.split("\\")[2]
    moved = last[: len(last) - len(old_z)] + moved_z.rjust(len(old_z))[: len(old_z)]
    data = (dicom_copy / "slice20.dcm").read_bytes()
    assert data.count(last.encode()) == 1 and len(moved) == len(last)
    (dicom_copy / "slice20.dcm").write_bytes(data.replace(last.encode(), moved.encode()))
    with pytest.raises(InputError, match="the slices are unevenly spaced"):
        read_image(dicom_copy)


# ---------------------------------------------------------------------------------------------------------------
# output location and writes


def test_output_that_is_a_file_is_refused_before_inference(model_path, ct_path, tmp_path):
    target = tmp_path / "taken"
    target.write_text("a file, not a folder")
    run = predict(tmp_path, [ct_path], model_path, target / "sub")
    assert_refused(run, ExitCode.USAGE, "is a file, not a folder")
    assert run.seconds < 30 and target.read_text() == "a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder: the refusal cannot show")
def test_read_only_output_folder_is_refused_before_inference(model_path, ct_path, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        run = predict(tmp_path, [ct_path], model_path, folder / "out")
    finally:
        folder.chmod(0o755)
    assert_refused(run, ExitCode.USAGE, "read-only")


def _file_size_limit(limit: int):
    def apply() -> None:  # runs in the child: writes past `limit` bytes fail (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


@pytest.mark.parametrize("output_format", ["nii.gz", "seg.nrrd"])
def test_full_disk_leaves_no_file_under_a_final_name(model_path, ct_path, tmp_path, output_format):
    out = tmp_path / "out"
    out.mkdir()
    run = predict(tmp_path, [ct_path], model_path, out, ("--format", output_format, "--save-result"),
                  preexec_fn=_file_size_limit(300))
    assert run.code == ExitCode.ERROR, run.messages
    assert "no file of this case was left under a final name" in run.messages
    assert "Traceback" not in run.messages
    assert list(out.iterdir()) == []  # neither a final name nor a temporary one


def test_a_failed_rerun_leaves_the_previous_runs_files_as_they_were(model_path, ct_path, tmp_path):
    """A second run into a folder holding a complete earlier run fails on a full disk after its label map was
    written: the earlier label map, result and probability maps are byte for byte as they were, and no temporary
    file is left (the earlier run's label map was replaced, then deleted, before)."""
    out = tmp_path / "out"
    extra = ("--save-result", "--probabilities")
    first = predict(tmp_path, [ct_path], model_path, out, extra)
    assert first.code == ExitCode.OK, first.messages
    before = {path: path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}
    label_size = (out / "ct.nii.gz").stat().st_size
    result_size = next(p for p in before if p.name.endswith(".maskmed-result")).stat().st_size
    assert label_size < result_size
    second = predict(tmp_path, [ct_path], model_path, out, extra,
                     preexec_fn=_file_size_limit((label_size + result_size) // 2))
    assert second.code == ExitCode.ERROR, second.messages
    assert {path: path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()} == before


def test_a_symlinked_probabilities_folder_is_refused_and_nothing_is_written_through_it(model_path, ct_path, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct_probabilities").symlink_to(elsewhere)
    run = predict(tmp_path, [ct_path], model_path, out, ("--probabilities",))
    assert run.code == ExitCode.USAGE and "is a symbolic link" in run.messages, run.messages
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["ct_probabilities"]


def test_a_long_input_name_and_control_characters_in_a_name_are_handled(model_path, ct_path, tmp_path):
    """A 245-character name fits once written, so its temporary name must fit too; a newline or ESC in a name cannot
    fake a line of output or reach the terminal raw."""
    long_input = tmp_path / ("c" * 238 + ".nii.gz")  # 245 characters
    long_input.symlink_to(ct_path)
    run = predict(tmp_path, [long_input], model_path, tmp_path / "long")
    assert run.code == ExitCode.OK, run.messages
    assert (tmp_path / "long" / ("c" * 238 + ".nii.gz")).is_file()
    hostile = tmp_path / "a\nmaskmed: info: fake\x1b[31m.nii.gz"
    hostile.symlink_to(ct_path)
    run = predict(tmp_path, [hostile], model_path, tmp_path / "hostile")
    assert run.code == ExitCode.OK, run.messages
    assert "\nmaskmed: info: fake" not in run.err and "\x1b" not in run.err
    assert "a\\nmaskmed: info: fake\\x1b[31m" in run.err


def test_the_case_name_of_a_folder_given_as_dot_is_the_folders_name(tmp_path, monkeypatch):
    from maskmed_core.predict_command import case_name

    folder = tmp_path / "series_07"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert case_name(Path(".")) == "series_07" and case_name(Path("sub/..")) == "series_07"
    assert case_name(Path("ct.nii.gz")) == "ct"


def test_an_output_batch_puts_all_files_in_place_or_none(tmp_path):
    from maskmed_core.atomic import atomic_path, output_batch

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    second.write_text("old b")
    with pytest.raises(RuntimeError), output_batch():
        with atomic_path(first, sync=False) as temporary:
            temporary.write_text("new a")
        assert first.read_text() == "old a"  # complete, but not in place before the batch ends
        raise RuntimeError("the second file failed")
    assert (first.read_text(), second.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    committed = []
    with pytest.raises(KeyboardInterrupt), output_batch() as batch:
        for path in (first, second):
            with atomic_path(path, sync=False) as temporary:
                temporary.write_text(f"new {path.stem}")
        # A Ctrl+C while the files are put in place waits until the last one is there (and recorded).
        batch.on_commit = lambda: (os.kill(os.getpid(), signal.SIGINT), committed.append(True))
    assert (first.read_text(), second.read_text(), committed) == ("new a", "new b", [True])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_every_atomic_write_checks_the_file_before_the_rename(tmp_path):
    from maskmed_core.atomic import atomic_path, verify_safetensors

    target = tmp_path / "model.maskmed"
    with pytest.raises(OSError, match="empty file"), atomic_path(target) as temporary:
        temporary.write_bytes(b"")
    save_file({"a": torch.zeros(1000)}, str(tmp_path / "whole.st"))
    data = (tmp_path / "whole.st").read_bytes()
    with pytest.raises(OSError, match="cut short"), atomic_path(target, verify=verify_safetensors) as temporary:
        temporary.write_bytes(data[:-10])
    assert list(tmp_path.iterdir()) == [tmp_path / "whole.st"]


# ---------------------------------------------------------------------------------------------------------------
# crashes and hangs: model config, geometry, pixel types


@pytest.mark.parametrize(("part", "key", "value", "phrase"), [
    ("encoder", "features", [16, -32, 64, 128, 192], "encoder.features[1]: -32 is outside"),
    ("encoder", "features", [16, 0, 64, 128, 192], "encoder.features[1]: 0 is outside"),
    ("head", "num_heads", 0, "head.num_heads: 0 is outside"),
    ("encoder", "strides", [[1, 1, 1], [2, 0, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "encoder.strides[1][1]"),
    ("transformer", "d_model", "128", "transformer.d_model: expected an integer, got str"),
    ("head", "dropout", "0.1", "head.dropout: expected a number, got str"),
    ("encoder", "features", 3000, "encoder.features: expected a list"),
])
def test_hostile_config_values_are_refused_naming_the_field(model_path, tmp_path, part, key, value, phrase):
    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", edit_json("config", lambda c: c[part].update(
        {key: value})))
    with pytest.raises(ModelFileError, match="invalid model metadata") as info:
        load_model_file(evil)
    assert phrase in str(info.value)


def test_deeply_nested_config_json_is_refused(model_path, ct_path, tmp_path):
    def nest(metadata):
        metadata["config"] = "[" * 200_000 + "]" * 200_000

    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", nest)
    out = tmp_path / "out"
    run = predict(tmp_path, [ct_path], evil, out)
    assert_refused(run, ExitCode.BAD_MODEL, "config: JSON nested deeper than 16 levels", out=out)


def test_config_in_wrong_types_via_cli(model_path, ct_path, tmp_path):
    evil = rewrite_model(model_path, tmp_path / "evil.maskmed", edit_json("config", lambda c: c["encoder"].update(
        features=[16, 32, 64, 128, "many"])))
    out = tmp_path / "out"
    assert_refused(predict(tmp_path, [ct_path], evil, out), ExitCode.BAD_MODEL, "encoder.features[4]", out=out)


def test_number_of_windows_is_bounded():
    from maskmed_core.inference.checks import MAX_WINDOWS, check_windows

    plans = Plans(spacing=(1.0, 1.0, 1.0), patch_size=(32, 32, 32), overlap=0.9)
    image = sitk.Image([512, 512, 400], sitk.sitkUInt8)  # nothing allocated beyond this test's few hundred MB
    with pytest.raises(InputError, match=f"more than the {MAX_WINDOWS:,} allowed"):
        check_windows(image, plans)
    assert check_windows(sitk.Image([64, 64, 64], sitk.sitkUInt8), Plans()) >= 1


def test_a_two_slice_volume_is_segmented_with_a_warning(model_path, tmp_path):
    """Two 2 mm slices of 480 x 480 (issue 23): segmented, with a warning that the slab is too thin for the model."""
    path = tmp_path / "two_slices.nii.gz"
    sitk.WriteImage(synthetic_ct(shape_zyx=(2, 480, 480), spacing=(0.8, 0.8, 2.0)), str(path))
    run = predict(tmp_path, [path], model_path)
    assert run.code == ExitCode.OK, run.messages
    assert "maskmed: warning:" in run.messages, run.messages
    assert "the volume is only 4 mm thick along its z axis (2 voxels of 2 mm)" in run.messages
    assert (tmp_path / "out" / "two_slices.nii.gz").is_file()


def test_thin_volume_warning_starts_at_an_eighth_of_the_patch():
    from maskmed_core.inference.checks import thin_volume_warning

    plans = Plans()  # 3 mm, patch (64, 96, 96): the warning below 8 model slices along z, 12 along y and x
    for size, thin in (([128, 128, 8], None), ([128, 128, 7], "z"), ([128, 11, 64], "y"), ([12, 128, 64], None)):
        image = sitk.Image(size, sitk.sitkUInt8)
        image.SetSpacing((3.0, 3.0, 3.0))
        warning = thin_volume_warning(image, plans)
        assert (warning is None) if thin is None else (f"along its {thin} axis" in warning), (size, warning)


@pytest.mark.parametrize(("matrix", "phrase"), [
    ("1 0.5 0 0 1 0 0 0 1", "sheared or scaled"),
    ("2 0 0 0 2 0 0 0 2", "sheared or scaled"),
])
def test_sheared_or_scaled_direction_is_refused_before_inference(model_path, tmp_path, matrix, phrase):
    path = tmp_path / "sheared.mha"
    sitk.WriteImage(synthetic_ct(), str(path))
    data = path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", f"TransformMatrix = {matrix}".encode())
    path.write_bytes(data)
    out = tmp_path / "out"
    run = predict(tmp_path, [path], model_path, out)
    assert_refused(run, ExitCode.BAD_INPUT, phrase, out=out)
    assert '"stage": "inference"' not in run.out


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_complex_pixels_are_refused(model_path, tmp_path, suffix):
    array = sitk.GetArrayFromImage(synthetic_ct(dtype=np.float32)).astype(np.complex64) * (1 + 1j)
    path = tmp_path / f"complex{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    out = tmp_path / "out"
    run = predict(tmp_path, [path], model_path, out)
    assert run.code == ExitCode.BAD_INPUT and ("complex" in run.messages or "values per voxel" in run.messages)
    assert_refused(run, ExitCode.BAD_INPUT, out=out)


def test_complex_image_in_memory_is_refused():
    from maskmed_core.io.reading import validate_volume

    image = sitk.GetImageFromArray(np.ones((8, 8, 8), np.complex64))
    with pytest.raises(InputError, match="complex-valued voxels"):
        validate_volume(image)


# ---------------------------------------------------------------------------------------------------------------
# result files validated like model files


def small_result(tmp_path: Path) -> Path:
    grid = Grid((6, 5, 4), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    rng = np.random.default_rng(0)
    result = SegmentationResult(
        masks=rng.integers(0, 255, (2, 4, 5, 6), dtype=np.uint8),
        class_given_object=np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], np.float32),
        objectness=np.array([0.9, 0.7], np.float32),
        classes=list(AMOS15_CLASSES[:3]), model_grid=grid, canonical_grid=grid, input_grid=grid,
    )
    return result.save(tmp_path / "case.maskmed-result")


def rewrite_result(source: Path, target: Path, metadata_edit=None, tensor_edit=None) -> Path:
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_np
    from safetensors.numpy import save_file as save_np

    with safe_open(str(source), framework="np") as handle:
        metadata = dict(handle.metadata())
    tensors = load_np(str(source))
    if metadata_edit is not None:
        metadata_edit(metadata)
    if tensor_edit is not None:
        tensor_edit(tensors)
    save_np(tensors, str(target), metadata=metadata)
    return target


@pytest.mark.parametrize(("metadata_edit", "tensor_edit", "phrase"), [
    (edit_json("grids", lambda g: g["input_grid"].update(size=[1200, 1200, 1200])), None,
     "grids.input_grid: size [1200, 1200, 1200] at [3.0, 3.0, 3.0] mm is not the canonical grid's"),
    (edit_json("classes", lambda c: c[0].update(label=70000)), None, "classes[0].label: 70000 is outside"),
    (None, lambda t: t.update(class_given_object=t["class_given_object"][:, :2].copy()), "one column per class"),
    (edit_json("grids", lambda g: g["model_grid"].update(size=[6, 5, 9])), None, "masks: shape"),
    (None, lambda t: t.update(objectness=np.array([np.nan, 0.5], np.float32)), "outside 0..1 or not finite"),
])
def test_hostile_result_files_are_refused(tmp_path, monkeypatch, metadata_edit, tensor_edit, phrase):
    evil = rewrite_result(small_result(tmp_path), tmp_path / "evil.maskmed-result", metadata_edit, tensor_edit)
    code = ("from maskmed_core.inference.result import SegmentationResult, ResultFileError\n"
            f"try:\n    SegmentationResult.load({str(evil)!r})\n"
            "except ResultFileError as error:\n    print('refused:', error)\n")
    run = run_child(["-c", code], tmp_path, env={"MASKMED_MEMORY_BUDGET_MB": "4096"}, module=False)
    print(f"peak RSS of the refusal: {run.peak_mb:.0f} MB")
    assert run.code == 0 and "Traceback" not in run.messages, run.messages
    assert "refused:" in run.out and phrase in run.out, run.out
    assert run.peak_mb < REFUSAL_PEAK_MB, f"peak RSS {run.peak_mb:.0f} MB"
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "4096")
    with pytest.raises(ResultFileError):
        SegmentationResult.load(evil)


def claim_1200_cubed(grids: dict) -> None:
    for name in ("input_grid", "canonical_grid"):
        grids[name].update(size=[1200, 1200, 1200])


@pytest.mark.parametrize("budget", ["none set", "1 TiB"])
def test_result_claiming_a_grid_its_masks_do_not_cover_is_refused_whatever_memory_is_free(tmp_path, monkeypatch,
                                                                                           budget):
    """Issue 23: a small result file whose input and canonical grids claim 1200^3 (agreeing with each other) was
    accepted with enough memory free and died with a MemoryError; the grids are now checked against the masks the
    file holds, whatever the budget."""
    evil = rewrite_result(small_result(tmp_path), tmp_path / "evil.maskmed-result",
                          edit_json("grids", claim_1200_cubed))
    assert evil.stat().st_size < 4096
    monkeypatch.delenv("MASKMED_MEMORY_BUDGET_MB", raising=False)
    code = ("from maskmed_core.inference.result import SegmentationResult, ResultFileError\n"
            f"try:\n    SegmentationResult.load({str(evil)!r})\n"
            "except ResultFileError as error:\n    print('refused:', error)\n")
    env = {"MASKMED_MEMORY_BUDGET_MB": str(1 << 20)} if budget == "1 TiB" else {}
    run = run_child(["-c", code], tmp_path, env=env, module=False)
    assert run.code == 0 and "Traceback" not in run.messages, run.messages
    assert "refused:" in run.out and "the masks this file holds cover 18.0 mm" in run.out, run.out
    assert run.peak_mb < REFUSAL_PEAK_MB, f"peak RSS {run.peak_mb:.0f} MB"


def test_result_over_the_memory_budget_is_refused(tmp_path, monkeypatch):
    path = small_result(tmp_path)
    monkeypatch.setenv("MASKMED_MEMORY_BUDGET_MB", "0.001")  # 1 kB: thresholding this result needs about 3.6 kB
    with pytest.raises(ResultFileError, match="more than the 0.0 GiB memory budget"):
        SegmentationResult.load(path)


def test_result_round_trip_still_loads(tmp_path):
    loaded = SegmentationResult.load(small_result(tmp_path))
    assert loaded.masks.shape == (2, 4, 5, 6) and loaded.label_map().GetSize() == (6, 5, 4)


# ---------------------------------------------------------------------------------------------------------------
# signals: SIGINT and SIGTERM are a cancel


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_inference_is_a_cancel(model_path, tmp_path, signum):
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(synthetic_ct((120, 192, 192)), str(path))
    out = tmp_path / "out"

    def interrupt_when_inferring(process, out_path):
        # No deadline: on a busy machine the model may take minutes to load; a run that ends ends the wait.
        while process.poll() is None:
            if '"stage": "inference"' in out_path.read_text():
                process.send_signal(signum)
                return
            time.sleep(0.05)

    run = predict(tmp_path, [path], model_path, out, ("--json", "--save-result"), on_start=interrupt_when_inferring)
    name = signal.Signals(signum).name
    assert run.code == ExitCode.CANCELLED, run.messages
    assert f"interrupted ({name if signum == signal.SIGTERM else 'SIGINT'})" in run.messages
    assert "no file was written" in run.messages
    assert json.loads(run.out.strip().splitlines()[-1]) == {"event": "done", "exit_code": 5}
    assert not out.exists() or not any(out.rglob("*"))


# ---------------------------------------------------------------------------------------------------------------
# --resume on another run's state


def _state(run_config: dict, model: torch.nn.Module) -> TrainingState:
    optimizer = torch.optim.AdamW(model.parameters())
    return TrainingState(step=10, model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler={}, torch_rng=torch.get_rng_state(), run_config=run_config)


def test_resume_refuses_another_runs_state(tmp_path):
    model = tiny_model()
    path = save_state(tmp_path / "training_state.safetensors", _state({"dataset": "A", "seed": 0}, model))
    state = load_state(path)
    check_resumable(state, {"dataset": "A", "seed": 0, "epochs": 99}, model, path)  # epochs may change
    with pytest.raises(TrainingStateError, match=r"another run \(dataset: 'A' there, 'B' now\)"):
        check_resumable(state, {"dataset": "B", "seed": 0}, model, path)


def test_resume_accepts_a_state_written_before_a_setting_existed(tmp_path):
    model = tiny_model()
    path = save_state(tmp_path / "training_state.safetensors", _state({"dataset": "A", "head": "decoupled"}, model))
    check_resumable(load_state(path), {"dataset": "A", "head": "decoupled", "init_encoder_only": False}, model, path)
    with pytest.raises(TrainingStateError, match="init_encoder_only: False there, True now"):
        check_resumable(load_state(path), {"dataset": "A", "head": "decoupled", "init_encoder_only": True}, model, path)


def test_resume_refuses_a_state_of_another_network(tmp_path):
    path = save_state(tmp_path / "training_state.safetensors", _state({"dataset": "A"}, tiny_model()))
    other = tiny_model(num_classes=5)
    with pytest.raises(TrainingStateError, match="do not fit this run's network"):
        check_resumable(load_state(path), {"dataset": "A"}, other, path)


@pytest.mark.parametrize(("change", "phrase"), [
    ({"history": {"a": 1}}, "its history is not a list of epoch records"),
    ({"history": [{"step": "ten"}]}, "its history is not a list of epoch records"),
    ({"torch_rng": torch.zeros(5000)}, "its random generator state is not a byte tensor"),
])
def test_a_state_with_hand_edited_progress_fields_is_refused_on_load(tmp_path, change, phrase):
    """They were used as found: `--resume` then failed with KeyError: -1 or 'RNG state must be a torch.ByteTensor'
    after the data loader was built, an internal error."""
    state = _state({"dataset": "A"}, tiny_model())
    for name, value in change.items():
        setattr(state, name, value)
    path = save_state(tmp_path / "training_state.safetensors", state)
    with pytest.raises(TrainingStateError, match=f"not a readable training state .*{phrase}.*start without --resume"):
        load_state(path)


def test_damaged_or_foreign_state_is_refused(tmp_path, model_path):
    with pytest.raises(TrainingStateError, match="not a MaskMed training state"):
        load_state(model_path)
    broken = tmp_path / "training_state.safetensors"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(TrainingStateError, match="not a readable training state"):
        load_state(broken)


# ---------------------------------------------------------------------------------------------------------------
# the half-precision model file (issue 10)


def test_bundled_model_is_half_precision_and_small():
    from safetensors import safe_open

    from maskmed_core.bundled import DEFAULT_MODEL

    with safe_open(str(DEFAULT_MODEL), framework="pt") as handle:
        assert handle.metadata()["weights_dtype"] == "float16"
    assert DEFAULT_MODEL.stat().st_size <= 20 * 10**6
    assert all(v.dtype == torch.float32 for v in load_model_file(DEFAULT_MODEL).state_dict.values())


def test_old_float32_model_file_still_loads(tmp_path):
    """A file written before weights_dtype existed: float32 tensors, no such metadata field."""
    model = tiny_model()
    path = save_model_file(tmp_path / "old.maskmed", model, Plans(), list(AMOS15_CLASSES[:3]),
                           weights_dtype="float32")
    old = rewrite_model(path, tmp_path / "older.maskmed", lambda m: m.pop("weights_dtype"))
    loaded = load_model_file(old).build_model()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_beyond_float16_range_are_stored_as_bfloat16(tmp_path):
    from safetensors import safe_open

    model = tiny_model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = 1e6
    path = save_model_file(tmp_path / "big.maskmed", model, Plans(), list(AMOS15_CLASSES[:3]))
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["weights_dtype"] == "bfloat16"
    first = next(iter(model.state_dict()))
    assert math.isclose(float(load_model_file(path).state_dict[first].view(-1)[0]), 1e6, rel_tol=1e-2)


def test_half_model_label_map_matches_float32(shared_data, tmp_path):
    """The bundled model's weights, made float32 again with a random error of up to half a float16 step added
    (so that storing them as float16 rounds each one as converting the original float32 file did), segment a
    real CT; the float16 and the float32 file give label maps that differ in under 0.1 % of voxels. (Against
    the original float32 file, the demo CT's label map differed in 24 of 1 380 064 voxels, 0.0017 %.)"""
    from maskmed_core.bundled import DEFAULT_MODEL
    from maskmed_core.inference import Predictor

    bundled = load_model_file(DEFAULT_MODEL)
    model = bundled.build_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.rand(parameter.shape, generator=generator) * 2 - 1
            parameter.mul_(1 + noise * 2.0**-11)  # float16 keeps 11 significant bits
    ct = sitk.ReadImage(str(shared_data / "ct" / "abdomen_ct_3mm.nii.gz"))
    # The top 32 slices (faster): the upper abdomen, where 18 % of the voxels are organs of the reference labels (in
    # the middle 32, chosen before, 0.4 %: a model that finds only those would be hard to tell from an empty one).
    ct = ct[:, :, -32:]
    maps = []
    for dtype in ("float32", "float16"):
        path = save_model_file(tmp_path / f"{dtype}.maskmed", model, bundled.plans, bundled.classes,
                               weights_dtype=dtype)
        maps.append(sitk.GetArrayFromImage(Predictor.from_file(path, "cpu").predict(ct).label_map()))
    assert np.count_nonzero(maps[0]) > 0.01 * maps[0].size  # a real segmentation, not an empty one
    differing = np.count_nonzero(maps[0] != maps[1])
    assert differing < 0.001 * maps[0].size, f"{differing} of {maps[0].size} voxels differ"
