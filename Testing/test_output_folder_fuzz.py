"""A fuzzer over what an output folder may already hold (issue 23): `maskmed predict --save-result --probabilities`
into a folder where each name the run will write is, at random, absent, a previous run's file, a read-only file, a
folder, a link to a file or a folder outside, or a broken link; the probability folder likewise, and its map names
too.

Whatever the folder held, one of two things must be true afterwards, and always the first:
- nothing outside the output folder changed (a link is replaced, never written through);
- the run succeeded and every output is a regular file under its name, readable, and everything else in the folder
  is as it was; or it failed with a message and no traceback, and the folder is exactly as it was (an earlier
  run's files kept byte for byte, no temporary file left).
Seeds make each case reproducible (``-k "seed_7"``).
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from factories import tiny_model_file

from maskmed_core.cli import main
from maskmed_core.events import ExitCode

CASE = "ct"
HAZARDS = ("absent", "old file", "read-only file", "folder", "link to a file outside", "link to a folder outside",
           "broken link")
FOLDER_HAZARDS = ("absent", "old folder", "file", "link to a folder outside")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.maskmed")


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    array = np.random.default_rng(0).integers(-1000, 400, (20, 40, 40)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))
    path = tmp_path_factory.mktemp("ct") / f"{CASE}.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def output_names(model_path, ct_file, tmp_path_factory) -> list[str]:
    """The paths a run writes, relative to the output folder (taken from a run into an empty folder)."""
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(["predict", str(ct_file), "--model", str(model_path), "-o", str(out), "--save-result",
                 "--probabilities"]) == ExitCode.OK
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): its kind, and its bytes, link target or mode."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            entries[key] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[key] = ("folder", stat.S_IMODE(info.st_mode))
        else:
            entries[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return entries


def plant(path: Path, hazard: str, outside: Path, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if hazard == "old file":
        path.write_bytes(f"earlier run {rng.random()}".encode())
    elif hazard == "read-only file":
        path.write_bytes(b"earlier, read-only")
        path.chmod(0o444)
    elif hazard == "folder":
        path.mkdir()
        (path / "kept.txt").write_text("inside a folder named like an output")
    elif hazard == "link to a file outside":
        path.symlink_to(outside / "secret.txt")
    elif hazard == "link to a folder outside":
        path.symlink_to(outside / "folder")
    elif hazard == "broken link":
        path.symlink_to(outside / "missing")


def make_folder(out: Path, outside: Path, names: list[str], seed: int) -> None:
    rng = random.Random(seed)
    out.mkdir()
    (out / "unrelated.txt").write_text("a file of the user's")
    folder_hazard = rng.choice(FOLDER_HAZARDS)
    folder = out / f"{CASE}_probabilities"
    if folder_hazard == "file":
        folder.write_text("a file where the probability folder goes")
    elif folder_hazard == "link to a folder outside":
        folder.symlink_to(outside / "folder")
    for name in names:
        inside_folder = name.startswith(f"{CASE}_probabilities/")
        if inside_folder and folder_hazard != "old folder":
            continue
        plant(out / name, rng.choice(HAZARDS), outside, rng)


@pytest.mark.parametrize("seed", range(16), ids=[f"seed_{s}" for s in range(16)])
def test_a_run_into_a_folder_of_anything_keeps_it_whole(model_path, ct_file, output_names, tmp_path, capsys, seed):
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text("not MaskMed's to touch")
    (outside / "folder" / "inside.txt").write_text("nor this")
    out = tmp_path / "out"
    make_folder(out, outside, output_names, seed)
    outside_before, before = snapshot(outside), snapshot(out)

    code = main(["predict", str(ct_file), "--model", str(model_path), "-o", str(out), "--save-result",
                 "--probabilities"])
    err = capsys.readouterr().err

    assert snapshot(outside) == outside_before
    after = snapshot(out)
    assert "Traceback" not in err, err
    if code == ExitCode.OK:
        for name in output_names:
            assert after[name][0] == "file", (name, after[name][0])
        assert sitk.ReadImage(str(out / f"{CASE}.nii.gz")).GetSize() == (40, 40, 20)
        untouched = {k: v for k, v in before.items() if k not in output_names and k != f"{CASE}_probabilities"}
        assert {k: after[k] for k in untouched} == untouched
    else:
        assert err.strip(), "a failed run must say why"
        assert after == before, sorted(set(after.items()) ^ set(before.items()), key=str)[:4]
