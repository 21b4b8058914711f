"""Preprocessed training cases, cached on disk and reused while their inputs and the plans stay the same.

Each case is preprocessed exactly as inference does it (:func:`maskmed_core.inference.preprocessing.prepare`:
reorient to the canonical axis order, resample linearly to the plans' spacing, normalise), and its label map is
resampled (nearest neighbour) onto the same model grid by physical position, so a label map stored with other axis
order or flips (e.g. LAS) lands on the right voxels.

Cache layout: ``cache_dir/<case>-<key>/`` holding ``image.npy`` (float32; absent for a label-only case),
``labels.npy`` (uint8), ``tissue.npy`` (uint8, see below), ``foreground.npz`` and ``meta.json``.

``tissue`` is the source label map itself on the model grid, before the label mapping (e.g. all TotalSegmentator
classes, not only the trained ones), with the unlabelled inside of the body marked (``synthesis.body_tissue_map``):
what CT synthesis and contrast augmentation read. It is kept when the source label values fit (<= 252).

Label-only cases (a label map whose image we do not have; ``preprocess_label_only``) are resampled from the label
map's own grid (canonical orientation, nearest neighbour) and have no image: training synthesises one.

The key hashes everything the result depends on (image and label file paths, sizes and modification times, the
plans, the class values, the label mapping, the cache format), so a changed input or plan gets a new entry. An entry
is written in a hidden temporary folder and renamed into place when complete, so a process killed mid-write (even by
kill -9) leaves at worst a ``.tmp-*`` folder, which is never read and is removed later. Entries of older keys are
kept (another run may still use them); delete ``cache_dir`` to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

import maskmed_core
from maskmed_core.inference.preprocessing import prepare
from maskmed_core.io import InputError
from maskmed_core.plans import Plans
from maskmed_core.training.dataset import Case, DatasetSpec, LabelMapping, apply_label_mapping, read_case

# Bump when what is written changes (preprocessing, file layout), so that old entries are not trusted.
CACHE_FORMAT_VERSION = 2
# nnU-Net's foreground sampling: up to this many voxel coordinates per class, but at least 1% of the class's voxels.
FOREGROUND_SAMPLES = 10000
FOREGROUND_MIN_FRACTION = 0.01
# A temporary folder older than this belongs to a process that died (preprocessing one case takes seconds).
_STALE_TEMPORARY_S = 3600.0
# Source label values up to this are kept as the tissue map (253..255 mark the body; see synthesis.py).
MAX_TISSUE_VALUE = 252


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


def preprocess_cases(
    spec: DatasetSpec,
    plans: Plans,
    class_values: list[int],
    cache_dir: str | os.PathLike[str],
    label_mapping: LabelMapping | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[PreprocessedCase]:
    """The training cases of ``spec`` preprocessed for ``plans``, from the cache where possible (in ``spec`` order).

    class_values: the label value (after ``label_mapping``) of class index 1, 2, … C, in order; label values not
        listed become background (0). At most 255 classes.
    cache_dir: created if needed; see the module docstring for the layout.
    progress: called after each case with (cases done, number of cases, case name).

    Raises InputError (naming the case) when a case cannot be read or has no label map; run ``check_dataset``
    first to hear about every problem at once.
    """
    _check_class_values(class_values)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache)
    results = []
    for index, case in enumerate(spec.cases):
        results.append(preprocess_case(case, plans, class_values, cache, label_mapping))
        if progress is not None:
            progress(index + 1, len(spec.cases), case.name)
    return results


def preprocess_case(
    case: Case,
    plans: Plans,
    class_values: list[int],
    cache_dir: Path,
    label_mapping: LabelMapping | None = None,
) -> PreprocessedCase:
    """One case, from ``cache_dir`` when its entry is there, else preprocessed and written there first."""
    if case.label is None:
        raise InputError(f"Case {case.name} has no label map; every training case needs one (see check_dataset).")
    key = cache_key(case, plans, class_values, label_mapping)
    entry = cache_dir / f"{_safe_name(case.name)}-{key}"
    if entry.is_dir():
        loaded = _load_entry(entry, case.name, key)
        if loaded is not None:
            return loaded
        shutil.rmtree(entry, ignore_errors=True)  # damaged by hand or by the disk: rebuild it
    image, labels, tissue, foreground = _preprocess(case, plans, class_values, label_mapping, seed=int(key[:8], 16))
    meta = {
        "name": case.name,
        "key": key,
        "spacing_zyx": list(plans.spacing),
        "shape_zyx": list(image.shape),
        "class_values": list(class_values),
        "image_file": str(case.image),
        "label_file": str(case.label),
    }
    _write_entry(entry, image, labels, tissue, foreground, meta)
    loaded = _load_entry(entry, case.name, key)
    if loaded is None:
        raise OSError(f"The cache entry {entry} could not be read back right after writing it; check the disk.")
    return loaded


def preprocess_label_only(
    label_path: Path,
    plans: Plans,
    class_values: list[int],
    cache_dir: str | os.PathLike[str],
    label_mapping: LabelMapping | None = None,
) -> PreprocessedCase:
    """A label map without its image, on a grid of the plans' spacing covering the label map's box (canonical
    orientation, nearest neighbour), from the cache when there. Its values must fit in 1..252 (they are kept as the
    case's ``tissue`` for synthesis). Raises InputError when it cannot be read or is not a label map."""
    from maskmed_core.inference.preprocessing import model_grid_for
    from maskmed_core.io import to_canonical
    from maskmed_core.training.dataset import read_label

    _check_class_values(class_values)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    name = _label_only_name(label_path)
    payload = {
        "format": CACHE_FORMAT_VERSION, "maskmed_core": maskmed_core.__version__, "label": _file_state(label_path),
        "plans": plans.to_dict(), "class_values": [int(v) for v in class_values],
        "label_mapping": sorted([int(k), int(v)] for k, v in label_mapping.items()) if label_mapping else None,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    entry = cache / f"{_safe_name(name)}-{key}"
    if entry.is_dir():
        loaded = _load_entry(entry, name, key)
        if loaded is not None:
            return loaded
        shutil.rmtree(entry, ignore_errors=True)
    try:
        source = to_canonical(read_label(label_path))
    except InputError as error:
        raise InputError(f"Label-only case {name}: {error}") from error
    grid = model_grid_for(source, plans.spacing)
    resampled = sitk.Resample(source, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, source.GetPixelID())
    raw = sitk.GetArrayFromImage(resampled)
    if int(raw.max(initial=0)) > MAX_TISSUE_VALUE:
        raise InputError(
            f"Label-only case {name}: label values go up to {int(raw.max())}; synthesis reads source labels of at most "
            f"{MAX_TISSUE_VALUE} (TotalSegmentator v2 ids). Give label maps in those ids."
        )
    labels, tissue = _labels_and_tissue(raw, class_values, label_mapping, plans.spacing)
    assert tissue is not None
    foreground = foreground_samples(labels, len(class_values), np.random.default_rng(int(key[:8], 16)))
    meta = {
        "name": name, "key": key, "spacing_zyx": list(plans.spacing), "shape_zyx": list(labels.shape),
        "class_values": list(class_values), "image_file": None, "label_file": str(label_path),
    }
    _write_entry(entry, None, labels, tissue, foreground, meta)
    loaded = _load_entry(entry, name, key)
    if loaded is None:
        raise OSError(f"The cache entry {entry} could not be read back right after writing it; check the disk.")
    return loaded


def _label_only_name(path: Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return "labels-" + name[: -len(suffix)]
    return "labels-" + name


def _labels_and_tissue(
    raw: np.ndarray, class_values: list[int], label_mapping: LabelMapping | None,
    spacing_zyx: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class indices (uint8) from source values (through ``label_mapping``), and the tissue map when the source
    values fit in it (else None)."""
    from maskmed_core.training.synthesis import body_tissue_map

    mapped = apply_label_mapping(raw, label_mapping) if label_mapping else raw
    to_index = {int(value): index + 1 for index, value in enumerate(class_values)}
    labels = apply_label_mapping(mapped, to_index).astype(np.uint8, copy=False)
    tissue = body_tissue_map(raw, spacing_zyx) if int(raw.max(initial=0)) <= MAX_TISSUE_VALUE else None
    return labels, tissue


def cache_key(case: Case, plans: Plans, class_values: list[int], label_mapping: LabelMapping | None = None) -> str:
    """16 hex digits identifying everything a case's preprocessed arrays depend on."""
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "maskmed_core": maskmed_core.__version__,
        "image": _file_state(case.image),
        "label": _file_state(case.label) if case.label is not None else None,
        "plans": plans.to_dict(),
        "class_values": [int(v) for v in class_values],
        "label_mapping": sorted([int(k), int(v)] for k, v in label_mapping.items()) if label_mapping else None,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_state(path: Path) -> Any:
    """Path, size and modification time of a file, or of each file directly inside a (DICOM) folder."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(e for e in path.iterdir() if e.is_file())
            return [str(path.absolute()), [[e.name, *_size_mtime(e)] for e in files]]
        return [str(path.absolute()), *_size_mtime(path)]
    except OSError as error:
        raise InputError(f"{path} could not be read ({error}): check that it exists and is readable.") from error


def _size_mtime(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _preprocess(
    case: Case, plans: Plans, class_values: list[int], label_mapping: LabelMapping | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[int, np.ndarray]]:
    try:
        image, label = read_case(case, None)  # the source values: the tissue map keeps them all
    except InputError as error:
        raise InputError(f"Case {case.name}: {error}") from error
    assert label is not None  # checked by the caller
    prepared = prepare(image, plans)
    # The label map lies on the image's physical grid but may be stored differently (axis order, flips): resampling
    # by physical position (identity transform) onto the model grid puts each voxel where the image's voxel is.
    # Nearest neighbour keeps label values whole.
    resampled = sitk.Resample(
        label, prepared.model_grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID()
    )
    labels, tissue = _labels_and_tissue(
        sitk.GetArrayViewFromImage(resampled), class_values, label_mapping, plans.spacing
    )
    image_array = np.ascontiguousarray(prepared.array, dtype=np.float32)
    if image_array.shape != labels.shape:
        raise AssertionError(f"image {image_array.shape} and labels {labels.shape} differ on the model grid")
    return image_array, labels, tissue, foreground_samples(labels, len(class_values), np.random.default_rng(seed))


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


# --------------------------------------------------------------------------------------------------------------
# the cache entry


def _write_entry(
    entry: Path,
    image: np.ndarray | None,
    labels: np.ndarray,
    tissue: np.ndarray | None,
    foreground: dict[int, np.ndarray],
    meta: dict[str, Any],
) -> None:
    temporary = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}")
    temporary.mkdir()
    try:
        if image is not None:
            _write_file(temporary / "image.npy", lambda f: np.save(f, image))
        _write_file(temporary / "labels.npy", lambda f: np.save(f, labels))
        if tissue is not None:
            _write_file(temporary / "tissue.npy", lambda f: np.save(f, tissue))
        arrays = {f"class_{index}": coords for index, coords in foreground.items()}
        _write_file(temporary / "foreground.npz", lambda f: np.savez(f, **arrays))
        # meta.json last: an entry is only ever renamed into place complete, but a reader still checks it.
        _write_file(temporary / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
        try:
            os.rename(temporary, entry)
        except OSError:
            # Another process finished the same entry first (the target folder exists and is not empty): use its.
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_file(path: Path, write: Callable[[Any], Any]) -> None:
    with open(path, "wb") as file:
        write(file)
        file.flush()
        # On disk before the rename makes the entry visible: after a power cut the entry is complete or absent.
        os.fsync(file.fileno())


def _load_entry(entry: Path, name: str, key: str) -> PreprocessedCase | None:
    """The cached case, or None when the entry is incomplete or damaged."""
    try:
        with open(entry / "meta.json", encoding="utf-8") as file:
            meta = json.load(file)
        if meta.get("key") != key:
            return None
        label_only = meta.get("image_file") is None
        image = None if label_only else np.load(entry / "image.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy", mmap_mode="r")
        tissue = np.load(entry / "tissue.npy", mmap_mode="r") if (entry / "tissue.npy").is_file() else None
        with np.load(entry / "foreground.npz") as archive:
            foreground = {int(k.removeprefix("class_")): archive[k] for k in archive.files}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    shape = tuple(meta.get("shape_zyx", ()))
    if labels.shape != shape or labels.dtype != np.uint8:
        return None
    if image is not None and (image.shape != shape or image.dtype != np.float32):
        return None
    if (tissue is not None and (tissue.shape != shape or tissue.dtype != np.uint8)) or (label_only and tissue is None):
        return None
    spacing = tuple(float(s) for s in meta["spacing_zyx"])
    return PreprocessedCase(
        name=name, image=image, labels=labels, foreground=foreground, spacing_zyx=spacing, tissue=tissue
    )


def _remove_stale_temporaries(cache: Path) -> None:
    now = time.time()
    for entry in cache.glob(".tmp-*"):
        try:
            if now - entry.stat().st_mtime > _STALE_TEMPORARY_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # removed by another process meanwhile


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".")[:80] or "case"


def _check_class_values(class_values: list[int]) -> None:
    values = [int(v) for v in class_values]
    if not values or len(values) > 255:
        raise ValueError(f"class_values must list 1..255 label values (one per class), got {len(values)}")
    if len(set(values)) != len(values) or any(v < 1 for v in values):
        raise ValueError(f"class_values must be distinct positive label values, got {values}")
