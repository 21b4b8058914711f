"""The on-disk form of preprocessed training cases and the manifest that lets training run from them alone.

Numpy and JSON only (no SimpleITK, no MONAI): a GPU machine with torch and nothing else can train from a cache
written elsewhere (``maskmed train CACHE/manifest.json``). ``cache.py`` writes the entries (it reads images, so
it needs SimpleITK); this module stores and loads them.

Entry: a folder with ``image.npy`` (float32, absent for a label-only case), ``labels.npy`` (uint8), ``tissue.npy``
(uint8, optional), ``foreground.npz`` and ``meta.json`` (written last).

Manifest (``manifest.json`` in the cache folder): the plans, the classes, and the entry folders of the real cases,
the label-only cases and an optional held-out case (never trained on; scored at the end of training).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskmed_core.atomic import atomic_path
from maskmed_core.classes import SegmentClass
from maskmed_core.io.errors import InputError
from maskmed_core.plans import Plans
from maskmed_core.untrusted import check_int, check_sequence, load_json

# A cache entry's folder name (entry_name): the case's name made safe, "-", the KEY_HEX_DIGITS-hex cache key; a
# manifest naming anything else (a path, "..") is refused, and only temporaries of this form (temporary_entry) are
# cleaned up as stale.
KEY_HEX_DIGITS = 16
_TEMPORARY_HEX_DIGITS = 8
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SAFE_NAME = 80
ENTRY_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]*-[0-9a-f]{{{KEY_HEX_DIGITS}}}")
TEMPORARY_ENTRY_NAME = re.compile(rf"\.tmp-{ENTRY_NAME.pattern}-[0-9a-f]{{{_TEMPORARY_HEX_DIGITS}}}")
MANIFEST_FILE = "manifest.json"
# A manifest lists every entry's name (tens of bytes each): room for a million cases, not for a memory attack.
MAX_MANIFEST_BYTES = 64 << 20
MANIFEST_FORMAT = "maskmed-training-cache"
MANIFEST_VERSION = 1
# nnU-Net's foreground sampling: up to this many voxel coordinates per class, but at least 1% of the class's voxels.
FOREGROUND_SAMPLES = 10000
FOREGROUND_MIN_FRACTION = 0.01


@dataclass
class PreprocessedCase:
    """One case on the model grid.

    image: (z, y, x) float32 normalised intensities (memory-mapped, read-only); None for a label-only case.
    labels: (z, y, x) uint8 class indices 0..C (memory-mapped, read-only): 0 background, i the i-th class of the
        ``class_values`` given to :func:`preprocess_cases`.
    foreground: class index -> (K, 3) int32 (z, y, x) voxel coordinates of that class, a random sample (for
        foreground oversampling); only classes present in the case have an entry.
    spacing_zyx: the grid's spacing (mm), the plans' spacing.
    tissue: (z, y, x) uint8 source labels with the body marked (see the module docstring), or None.
    """

    name: str
    image: np.ndarray | None
    labels: np.ndarray
    foreground: dict[int, np.ndarray]
    spacing_zyx: tuple[float, float, float]
    tissue: np.ndarray | None = None
    entry: str = ""  # the cache folder it was loaded from (its name), for the manifest



def foreground_samples(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Class index -> (K, 3) int32 (z, y, x) coordinates, K = min(voxels, max(10000, 1% of voxels)), no repeats."""
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    classes = flat[where]
    # One sort groups the voxels of all classes (rather than one full pass over the volume per class).
    order = np.argsort(classes, kind="stable")
    where, classes = where[order], classes[order]
    bounds = np.searchsorted(classes, np.arange(1, num_classes + 2))
    samples = {}
    for index in range(1, num_classes + 1):
        voxels = where[bounds[index - 1] : bounds[index]]
        if voxels.size == 0:
            continue
        count = min(voxels.size, max(FOREGROUND_SAMPLES, math.ceil(voxels.size * FOREGROUND_MIN_FRACTION)))
        chosen = np.sort(rng.choice(voxels, count, replace=False))
        samples[index] = np.stack(np.unravel_index(chosen, labels.shape), axis=1).astype(np.int32)
    return samples



def _read_foreground(path: Path, shape: tuple[int, ...]) -> dict[int, np.ndarray] | None:
    """The entry's foreground coordinates, or None when the archive is not what ``write_entry`` writes: each member's
    header is read before its data, so a member claiming more rows than the case has voxels (a zip bomb in a cache
    from elsewhere) is refused before it is inflated; every coordinate must lie inside ``shape``."""
    voxels = math.prod(shape)
    foreground = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            match = re.fullmatch(r"class_([0-9]{1,3})\.npy", member)
            if match is None:
                return None
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                rows_columns, _, dtype = read_header(stream)
                if len(rows_columns) != 2 or rows_columns[1] != 3 or rows_columns[0] > voxels or dtype.kind not in "iu":
                    return None
            with archive.open(member) as stream:
                coordinates = np.lib.format.read_array(stream, allow_pickle=False)
            if coordinates.size and ((coordinates < 0).any() or (coordinates >= np.array(shape)).any()):
                return None
            foreground[int(match.group(1))] = coordinates
    return foreground


def entry_name(case_name: str, key: str) -> str:
    """The folder name of a case's cache entry (matches ENTRY_NAME): the case's name with every run of characters
    other than letters, digits, ".", "_" and "-" made one "_", leading and trailing dots dropped, cut to 80
    characters ("case" when nothing is left), then "-" and the key."""
    if not re.fullmatch(rf"[0-9a-f]{{{KEY_HEX_DIGITS}}}", key):
        raise ValueError(f"a cache key is {KEY_HEX_DIGITS} hex digits, got {key!r}")
    safe = _UNSAFE_IN_NAME.sub("_", case_name).strip(".")[:_MAX_SAFE_NAME] or "case"
    return f"{safe}-{key}"


def write_entry(
    entry: Path,
    image: np.ndarray | None,
    labels: np.ndarray,
    tissue: np.ndarray | None,
    foreground: dict[int, np.ndarray],
    meta: dict[str, Any],
) -> None:
    temporary = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:_TEMPORARY_HEX_DIGITS]}")
    temporary.mkdir()
    try:
        if image is not None:
            write_file(temporary / "image.npy", lambda f: np.save(f, image))
        write_file(temporary / "labels.npy", lambda f: np.save(f, labels))
        if tissue is not None:
            write_file(temporary / "tissue.npy", lambda f: np.save(f, tissue))
        arrays = {f"class_{index}": coords for index, coords in foreground.items()}
        write_file(temporary / "foreground.npz", lambda f: np.savez(f, **arrays))
        # meta.json last: an entry is only ever renamed into place complete, but a reader still checks it.
        write_file(temporary / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
        try:
            os.rename(temporary, entry)
        except OSError:
            # Another process finished the same entry first (the target folder exists and is not empty): use its.
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_file(path: Path, write: Callable[[Any], Any]) -> None:
    with open(path, "wb") as file:
        write(file)
        file.flush()
        # On disk before the rename makes the entry visible: after a power cut the entry is complete or absent.
        os.fsync(file.fileno())


def load_entry(entry: Path, name: str, key: str) -> PreprocessedCase | None:
    """The cached case, or None when the entry is incomplete or damaged."""
    try:
        meta = load_json((entry / "meta.json").read_text(encoding="utf-8"), str(entry / "meta.json"))
        if meta.get("key") != key:
            return None
        label_only = meta.get("image_file") is None
        image = None if label_only else np.load(entry / "image.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy", mmap_mode="r")
        tissue = np.load(entry / "tissue.npy", mmap_mode="r") if (entry / "tissue.npy").is_file() else None
        shape = tuple(int(n) for n in meta["shape_zyx"])
        spacing = tuple(float(s) for s in meta["spacing_zyx"])
        if labels.shape != shape or labels.dtype != np.uint8 or len(spacing) != 3:
            return None
        if image is not None and (image.shape != shape or image.dtype != np.float32):
            return None
        if (tissue is not None and (tissue.shape != shape or tissue.dtype != np.uint8)) or (
                label_only and tissue is None):
            return None
        foreground = _read_foreground(entry / "foreground.npz", shape)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return None
    if foreground is None:
        return None
    return PreprocessedCase(
        name=name, image=image, labels=labels, foreground=foreground, spacing_zyx=spacing, tissue=tissue,
        entry=entry.name,
    )




# --------------------------------------------------------------------------------------------------------------
# the manifest


@dataclass
class CacheManifest:
    """What training needs besides the arrays: plans, classes and which entries (folder names in the cache) are
    the real, label-only and held-out cases."""

    plans: Plans
    classes: list[SegmentClass]
    cases: list[str]
    label_only: list[str] = field(default_factory=list)
    holdout: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "plans": self.plans.to_dict(),
            "classes": [c.to_dict() for c in self.classes], "cases": self.cases, "label_only": self.label_only,
            "holdout": self.holdout, "source": self.source,
        }


def is_manifest(path: str | os.PathLike[str]) -> bool:
    """True for a cache manifest file, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if path.name != MANIFEST_FILE or not path.is_file():
        return False
    try:
        return load_json(path.read_text(encoding="utf-8"), str(path), MAX_MANIFEST_BYTES).get("format") == \
            MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_manifest(cache_dir: Path, manifest: CacheManifest) -> Path:
    path = Path(cache_dir) / MANIFEST_FILE
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(manifest.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


def read_manifest(path: str | os.PathLike[str]) -> tuple[CacheManifest, Path]:
    """The manifest and the cache folder it describes. Raises InputError naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        data = load_json(path.read_text(encoding="utf-8"), str(path), MAX_MANIFEST_BYTES)
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable training-cache manifest ({error})") from error
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a MaskMed training-cache manifest")
    version = data.get("version", 0)
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise InputError(f"{path} was written by a newer MaskMed (manifest version {version})")
    try:
        check_int(version, "version", 0, MANIFEST_VERSION)
        holdout = data.get("holdout")
        manifest = CacheManifest(
            plans=Plans.from_dict(data["plans"]),
            classes=[SegmentClass.from_dict(c) for c in check_sequence(data["classes"], "classes", 1, 255)],
            cases=_entry_names(data["cases"], "cases"),
            label_only=_entry_names(data.get("label_only", []), "label_only"),
            holdout=None if holdout is None else _entry_names([holdout], "holdout")[0],
            source=dict(data.get("source", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        what = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise InputError(f"{path} is a damaged training-cache manifest ({what}): prepare the cache again "
                         "(maskmed train --prepare-only)") from error
    return manifest, path.parent


def _entry_names(value: Any, field: str) -> list[str]:
    """The entry folder names a manifest lists under ``field``; ValueError for anything but plain entry names."""
    names = check_sequence(value, field, 0, 100_000)
    for name in names:
        if not isinstance(name, str) or not ENTRY_NAME.fullmatch(name):
            raise ValueError(f"{field} lists {name!r}, which is not a cache entry's folder name")
    return names


def load_cached(cache_dir: Path, entry_name: str) -> PreprocessedCase:
    """One entry named in a manifest; InputError when it is missing or damaged."""
    entry = Path(cache_dir) / entry_name
    try:
        meta = load_json((entry / "meta.json").read_text(encoding="utf-8"), str(entry / "meta.json"))
    except (OSError, ValueError) as error:
        raise InputError(f"the cache entry {entry} is missing or damaged ({error}); prepare the cache again") from error
    loaded = load_entry(entry, str(meta.get("name", entry_name)), str(meta.get("key")))
    if loaded is None:
        raise InputError(f"the cache entry {entry} is damaged; prepare the cache again")
    return loaded
