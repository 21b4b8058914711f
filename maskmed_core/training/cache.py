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
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

import maskmed_core
from maskmed_core.inference.preprocessing import prepare
from maskmed_core.io import InputError
from maskmed_core.io.reading import VOLUME_SUFFIXES
from maskmed_core.plans import Plans
from maskmed_core.training.cache_entries import (
    KEY_HEX_DIGITS,
    TEMPORARY_ENTRY_NAME,
    PreprocessedCase,
    entry_name,
    foreground_samples,
    load_entry,
    write_entry,
)
from maskmed_core.training.dataset import Case, DatasetSpec, LabelMapping, apply_label_mapping, read_case

# Bump when what is written changes (preprocessing, file layout), so that old entries are not trusted.
CACHE_FORMAT_VERSION = 2
# A temporary folder older than this belongs to a process that died (preprocessing one case takes seconds).
_STALE_TEMPORARY_S = 3600.0
# Source label values up to this are kept as the tissue map (253..255 mark the body; see synthesis.py).
MAX_TISSUE_VALUE = 252


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
    entry = cache_dir / entry_name(case.name, key)
    if entry.is_dir():
        loaded = load_entry(entry, case.name, key)
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
    write_entry(entry, image, labels, tissue, foreground, meta)
    loaded = load_entry(entry, case.name, key)
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
    key = _key(None, label_path, plans, class_values, label_mapping)
    entry = cache / entry_name(name, key)
    if entry.is_dir():
        loaded = load_entry(entry, name, key)
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
    write_entry(entry, None, labels, tissue, foreground, meta)
    loaded = load_entry(entry, name, key)
    if loaded is None:
        raise OSError(f"The cache entry {entry} could not be read back right after writing it; check the disk.")
    return loaded


def _label_only_name(path: Path) -> str:
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
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
    """KEY_HEX_DIGITS (16) hex digits identifying everything a case's preprocessed arrays depend on."""
    return _key(case.image, case.label, plans, class_values, label_mapping)


def _key(
    image: Path | None, label: Path | None, plans: Plans, class_values: list[int], label_mapping: LabelMapping | None
) -> str:
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "maskmed_core": maskmed_core.__version__,
        "image": _file_state(image) if image is not None else None,
        "label": _file_state(label) if label is not None else None,
        "plans": plans.to_dict(),
        "class_values": [int(v) for v in class_values],
        "label_mapping": sorted([int(k), int(v)] for k, v in label_mapping.items()) if label_mapping else None,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


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


# --------------------------------------------------------------------------------------------------------------
# the cache entry


def _remove_stale_temporaries(cache: Path) -> None:
    now = time.time()
    for entry in cache.glob(".tmp-*"):
        if not TEMPORARY_ENTRY_NAME.fullmatch(entry.name):
            continue  # not one of ours: --cache-dir may be a shared folder
        try:
            if now - entry.stat().st_mtime > _STALE_TEMPORARY_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # removed by another process meanwhile


def _check_class_values(class_values: list[int]) -> None:
    values = [int(v) for v in class_values]
    if not values or len(values) > 255:
        raise ValueError(f"class_values must list 1..255 label values (one per class), got {len(values)}")
    if len(set(values)) != len(values) or any(v < 1 for v in values):
        raise ValueError(f"class_values must be distinct positive label values, got {values}")
