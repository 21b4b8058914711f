"""A training cache from elsewhere (`maskmed train CACHE/manifest.json`, a cache made on another machine) is a file
from a stranger: its manifest may name folders outside the cache, its foreground archive may be a zip bomb, its
fields may be damaged. Each is refused with a message, or the entry counted as damaged, never an internal error."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.io.errors import InputError
from maskmed_core.plans import Plans
from maskmed_core.training.cache import _remove_stale_temporaries
from maskmed_core.training.cache_entries import (
    ENTRY_NAME,
    TEMPORARY_ENTRY_NAME,
    CacheManifest,
    entry_name,
    load_cached,
    load_entry,
    read_manifest,
    write_entry,
    write_manifest,
)

SHAPE = (4, 5, 6)
KEY = "0123456789abcdef"
ENTRY = f"case-{KEY}"


def tiny_entry(cache: Path, name: str = ENTRY) -> Path:
    """A label-only entry of SHAPE voxels as the cache writes it, with one class in one voxel."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[1, 2, 3] = 1
    meta = {"name": "case", "key": KEY, "spacing_zyx": [3.0, 3.0, 3.0], "shape_zyx": list(SHAPE),
            "class_values": [1], "image_file": None, "label_file": "labels.nii.gz"}
    entry = cache / name
    cache.mkdir(exist_ok=True)
    write_entry(entry, None, labels, labels.copy(), {1: np.array([[1, 2, 3]], np.int32)}, meta)
    return entry


def npy_member(shape: tuple[int, ...], data: bytes) -> bytes:
    """An .npy header claiming ``shape`` int32, followed by ``data`` (however short)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<i4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def test_a_written_entry_loads(tmp_path):
    loaded = load_entry(tiny_entry(tmp_path / "cache"), "case", KEY)
    assert loaded is not None and loaded.foreground[1].tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("member", [
    npy_member((10**12, 3), bytes(12)),  # a zip bomb's claim: 12 TB of rows, refused before inflating
    npy_member((1, 3), np.array([[1, 2, 99]], np.int32).tobytes()),  # a coordinate outside the case
    npy_member((2, 2), bytes(16)),  # not (K, 3)
])
def test_a_foreground_archive_other_than_the_cache_writes_makes_the_entry_damaged(tmp_path, member):
    entry = tiny_entry(tmp_path / "cache")
    with zipfile.ZipFile(entry / "foreground.npz", "w") as archive:
        archive.writestr("class_1.npy", member)
    assert load_entry(entry, "case", KEY) is None
    with pytest.raises(InputError, match="is damaged; prepare the cache again"):
        load_cached(tmp_path / "cache", ENTRY)


@pytest.mark.parametrize("edit", [
    lambda meta: meta.pop("spacing_zyx"), lambda meta: meta.update(shape_zyx=40),
    lambda meta: meta.update(spacing_zyx=[3.0, 3.0]),
])
def test_a_damaged_meta_file_makes_the_entry_damaged(tmp_path, edit):
    entry = tiny_entry(tmp_path / "cache")
    meta = json.loads((entry / "meta.json").read_text())
    edit(meta)
    (entry / "meta.json").write_text(json.dumps(meta))
    assert load_entry(entry, "case", KEY) is None


def test_a_meta_file_that_is_not_an_object_makes_the_entry_damaged(tmp_path):
    entry = tiny_entry(tmp_path / "cache")
    (entry / "meta.json").write_text("[1]")
    assert load_entry(entry, "case", KEY) is None


DELETE = object()


def manifest_file(cache: Path, **changes) -> Path:
    """The manifest of one entry as the cache writes it, with ``changes`` made to its fields (DELETE: removed)."""
    cache.mkdir()
    path = write_manifest(cache, CacheManifest(Plans(spacing=(3.0, 3.0, 3.0), patch_size=(32, 32, 32)),
                                               AMOS15_CLASSES[:1], [ENTRY]))
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not DELETE}))
    return path


@pytest.mark.parametrize("cases", [["../outside/case-0123456789abcdef"], ["/tmp/case-0123456789abcdef"], [".."]])
def test_a_manifest_naming_a_folder_outside_the_cache_is_refused(tmp_path, cases):
    path = manifest_file(tmp_path / "cache", cases=cases)
    with pytest.raises(InputError, match=r"damaged training-cache manifest \(cases lists .* not a cache entry's "):
        read_manifest(path)


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"plans": DELETE}, "no 'plans'"), ({"cases": 5}, "expected a list"), ({"version": "x"}, "expected an integer"),
    ({"holdout": "../x"}, "holdout lists '../x'"), ({"classes": []}, "0 entries"),
])
def test_a_damaged_manifest_is_refused_naming_the_problem(tmp_path, changes, phrase):
    path = manifest_file(tmp_path / "cache", **changes)
    with pytest.raises(InputError, match="damaged training-cache manifest") as info:
        read_manifest(path)
    assert phrase in str(info.value) and "prepare the cache again" in str(info.value)


def test_a_manifest_nested_too_deep_is_refused(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="not a readable training-cache manifest .*nested deeper"):
        read_manifest(path)


def test_a_good_manifest_reads(tmp_path):
    manifest, cache = read_manifest(manifest_file(tmp_path / "cache"))
    assert manifest.cases == [ENTRY] and cache == tmp_path / "cache"


def test_only_the_cache_s_own_stale_temporaries_are_removed(tmp_path):
    """--cache-dir may be a shared folder: another tool's '.tmp-...' folder is not ours to delete."""
    ours = tmp_path / f".tmp-{ENTRY}-0a1b2c3d"
    foreign = tmp_path / ".tmp-build-of-another-tool"
    for folder in (ours, foreign):
        folder.mkdir()
        (folder / "data.txt").write_text("x")
        two_hours_ago = time.time() - 7200
        os.utime(folder, (two_hours_ago, two_hours_ago))
    _remove_stale_temporaries(tmp_path)
    assert not ours.exists() and (foreign / "data.txt").is_file()


@pytest.mark.parametrize("case_name", ["s0002", "../../etc", ".hidden", "", "...", "ct with spaces/und ümlaut",
                                       "x" * 300, "-starts-with-a-dash"])
def test_every_entry_the_cache_names_is_one_its_manifest_check_accepts(tmp_path, case_name):
    """The names the cache writes and the patterns that check a manifest and find stale temporaries are declared
    side by side; a case name of any form must give an entry (and a temporary) they accept, inside the cache."""
    name = entry_name(case_name, "0123456789abcdef")
    assert ENTRY_NAME.fullmatch(name) and (tmp_path / name).parent == tmp_path
    write_entry(tmp_path / name, None, np.zeros(SHAPE, np.uint8), None, {}, {"name": case_name})
    assert (tmp_path / name).is_dir() and not list(tmp_path.glob(".tmp-*"))
    assert TEMPORARY_ENTRY_NAME.fullmatch(f".tmp-{name}-0a1b2c3d")


def test_an_entry_name_needs_a_cache_key():
    with pytest.raises(ValueError, match="16 hex digits"):
        entry_name("s0002", "../x")


def test_json_nested_too_deep_is_damage_not_a_crash(tmp_path):
    """Python's json recursion ends in a RecursionError (an internal error); the depth is bounded first."""
    from maskmed_core.training.cache_entries import is_manifest

    entry = tiny_entry(tmp_path / "cache")
    (entry / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    assert load_entry(entry, "case", KEY) is None
    manifest = tmp_path / "elsewhere" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    assert not is_manifest(manifest)
