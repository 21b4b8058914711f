"""Training datasets: an nnU-Net v2 raw folder, a JSON case list or a CSV case list, read as one :class:`DatasetSpec`.

Loading only looks at names and folders (it reads no image), so it is fast and never fails on a bad case: a case
whose image or label is missing still becomes a :class:`Case` (pointing at the path that is missing), and files that
belong to no case are kept in ``DatasetSpec.stray_files``. :func:`maskmed_core.training.checks.check_dataset` then
reports every such problem at once. Errors in the dataset description itself (no ``dataset.json``, a non-CT channel,
region-based labels, a CSV without an ``image`` column…) raise :class:`~maskmed_core.io.errors.InputError`.

Images are read with :func:`maskmed_core.io.read_image` (files or DICOM series folders); label maps are NIfTI, NRRD
or MetaImage files read with SimpleITK, integer-valued, on the same physical grid as their image (they may be stored
with other axis order or flips, e.g. LAS next to an LPS DICOM series).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from maskmed_core.classes import SegmentClass
from maskmed_core.io.errors import InputError
from maskmed_core.io.formats import VOLUME_SUFFIXES
from maskmed_core.io.reading import check_before_header, check_voxel_data, read_header, read_image, read_voxels
from maskmed_core.io.volume_checks import check_memory_budget
from maskmed_core.label_mapping import MAX_LABEL_VALUE
from maskmed_core.untrusted import UntrustedValueError, load_json

# source label value -> target label value; values not listed become background (0)
LabelMapping = dict[int, int]

_CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A dataset.json or JSON case list names each case's files (a few hundred bytes each): room for 100 000 cases.
MAX_DATASET_JSON_BYTES = 64 << 20
_NNUNET_IMAGE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_FORMATS = (
    "an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/), a .json case list "
    '({"labels": {...}, "cases": [{"image": ..., "label": ...}, ...]}) or a .csv case list (columns image,label '
    "and optionally name)"
)


@dataclass
class Case:
    """One case: ``image`` is a volume file or a DICOM series folder, ``label`` its label map file (None: none given).

    The paths need not exist: a missing file is reported by ``check_dataset``, not by loading.
    """

    name: str
    image: Path
    label: Path | None


@dataclass
class DatasetSpec:
    """A training dataset.

    root: the nnU-Net folder, or the folder of the JSON/CSV file (relative paths there are relative to it).
    cases: the training cases, sorted by name for an nnU-Net folder, in file order for a JSON or CSV list.
    labels: class name -> label value in the label maps (after ``label_mapping``, if one is used); background (0)
        is not included.
    file_ending: e.g. ".nii.gz" (nnU-Net's ``file_ending``; for a JSON/CSV list the ending all label maps share,
        "" when they differ).
    test_cases: cases of ``imagesTs/`` (or the JSON list's ``"test"``), label usually None; not used for training.
    stray_files: files that belong to no case (e.g. ``labelsTr/notes.txt``, a second channel ``X_0001.nii.gz``)
        -> why they do not fit; reported by ``check_dataset``.
    class_details: class name -> its colour and terminology, from the optional ``"maskmed_classes"`` list of a
        dataset.json or JSON case list (``SegmentClass.to_dict`` entries; what the Slicer panel writes for segments
        painted with a name, colour and terminology of their own), so a new class keeps them in the model file.
    """

    root: Path
    cases: list[Case]
    labels: dict[str, int]
    file_ending: str
    test_cases: list[Case] = field(default_factory=list)
    stray_files: dict[Path, str] = field(default_factory=dict)
    class_details: dict[str, SegmentClass] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# loading


def load_dataset(
    path: str | os.PathLike[str],
    labels: dict[str, int] | None = None,
    label_mapping: LabelMapping | None = None,
) -> DatasetSpec:
    """Read a dataset description: an nnU-Net v2 raw folder (or its ``dataset.json``), a ``.json`` or ``.csv`` list.

    labels: class name -> label value (background excluded), as a ``--labels`` option gives it. A CSV list has no
        place for class names, so there it is the way to name them; for an nnU-Net folder or JSON list it replaces
        the file's ``labels``. When neither gives labels, the values found in the label maps (after
        ``label_mapping``) become classes named ``class_<value>`` (this reads every label map).
    label_mapping: source value -> target value applied when reading label maps (e.g. TotalSegmentator ids ->
        AMOS ids; unlisted values become background). Here it only matters when class names are derived from the
        label maps; pass it again to ``check_dataset``, ``compute_fingerprint`` and ``preprocess_cases``.

    Raises InputError when the description itself is wrong; problems of single cases are left to ``check_dataset``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist: give {_FORMATS}.")
    if path.is_dir():
        return _load_nnunet(path, labels)
    suffix = path.suffix.lower()
    if suffix == ".json":
        if path.name == "dataset.json" and (path.parent / "imagesTr").is_dir():
            return _load_nnunet(path.parent, labels)
        return _load_json_list(path, labels, label_mapping)
    if suffix == ".csv":
        return _load_csv_list(path, labels, label_mapping)
    raise InputError(f"{path} is not a dataset description MaskMed reads: give {_FORMATS}.")


def parse_labels(raw: Any, source: str) -> dict[str, int]:
    """Check a ``labels`` mapping (class name -> label value) and return it without background (value 0).

    source: how messages name where the mapping came from (e.g. the dataset.json path). Raises InputError for
    nnU-Net's region-based labels (lists of values), non-integer, negative, too large or repeated values, empty
    names, names a model file cannot hold (a newline or other non-printable character, more than
    ``untrusted.MAX_NAME_LENGTH`` characters), and a mapping with no class besides background.
    """
    if not isinstance(raw, dict) or not raw:
        raise InputError(
            f'{source}: "labels" must be a mapping from class name to label value, e.g. '
            '{"background": 0, "liver": 1, "spleen": 2}.'
        )
    regions = [str(name) for name, value in raw.items() if isinstance(value, list | tuple)]
    if regions:
        raise InputError(
            f"{source} uses nnU-Net's region-based labels ({', '.join(regions)} are lists of label values). MaskMed "
            "trains on plain classes, one label value per class, and does not support regions: give each class a "
            'single value (e.g. "liver": 1) and label maps whose voxels hold one class each.'
        )
    from maskmed_core.untrusted import MAX_NAME_LENGTH, UntrustedValueError, check_text

    result: dict[str, int] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{source}: class names must be non-empty text, got {name!r}.")
        try:  # the model file's rule (classes.check_class), now rather than when the first epoch is saved
            check_text(name, "name", MAX_NAME_LENGTH)
        except UntrustedValueError as error:
            raise InputError(
                f"{source}: the class name {name!r:.80} cannot go into a model file ({error.problem}): class names "
                f"are printable text of at most {MAX_NAME_LENGTH} characters on one line; rename the class."
            ) from error
        number = _as_int(value)
        if number is None or not 0 <= number <= MAX_LABEL_VALUE:
            raise InputError(
                f"{source}: the label value of {name!r} is {value!r}; label values must be whole numbers in "
                f"0..{MAX_LABEL_VALUE} (0 is background)."
            )
        if number == 0:
            continue
        if number in result.values():
            other = next(n for n, v in result.items() if v == number)
            raise InputError(
                f"{source}: {other!r} and {name!r} both have the label value {number}; each class needs its own value."
            )
        result[name] = number
    if not result:
        raise InputError(f"{source}: the labels declare no class besides background (0); declare at least one.")
    return result


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    return None


def _read_json(path: Path) -> Any:
    try:
        return load_json(path.read_text(encoding="utf-8"), str(path), MAX_DATASET_JSON_BYTES)
    except UntrustedValueError as error:
        raise InputError(f"{path} is not valid JSON ({error}): fix the file.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path} could not be read ({error}).") from error


def _check_channels(meta: dict[str, Any], source: Path) -> None:
    """nnU-Net's ``channel_names`` (v1: ``modality``) must declare exactly one channel, CT."""
    channels = meta.get("channel_names", meta.get("modality"))
    if channels is None:
        raise InputError(f'{source} has no "channel_names": add "channel_names": {{"0": "CT"}} (MaskMed is CT-only).')
    if not isinstance(channels, dict) or len(channels) != 1:
        shown = ", ".join(f"{k}: {v}" for k, v in channels.items()) if isinstance(channels, dict) else repr(channels)
        raise InputError(
            f"{source} declares the channels {{{shown}}}; MaskMed is a single-channel CT model: give one channel, "
            '"channel_names": {"0": "CT"}, with one CT image per case (CASE_0000<file_ending>).'
        )
    name = str(next(iter(channels.values())))
    if name.strip().upper() != "CT":
        raise InputError(
            f"{source} declares the channel {name!r}; MaskMed segments CT in Hounsfield units only (single channel). "
            'If the images are CT, declare "channel_names": {"0": "CT"}; other modalities (MR, PET…) are not '
            "supported."
        )


def _load_nnunet(folder: Path, labels: dict[str, int] | None) -> DatasetSpec:
    dataset_json = folder / "dataset.json"
    if not dataset_json.is_file():
        raise InputError(
            f"{folder} has no dataset.json. An nnU-Net v2 raw dataset folder holds dataset.json, imagesTr/ and "
            f"labelsTr/; otherwise give a .json or .csv case list ({_FORMATS})."
        )
    meta = _read_json(dataset_json)
    if not isinstance(meta, dict):
        raise InputError(f"{dataset_json} must hold a JSON object (labels, channel_names, file_ending…).")
    _check_channels(meta, dataset_json)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f'{dataset_json} needs "file_ending", e.g. ".nii.gz" (the ending of every image and label).')
    if "labels" not in meta and labels is None:
        raise InputError(f'{dataset_json} has no "labels": add them, e.g. {{"background": 0, "liver": 1}}.')
    declared = parse_labels(meta["labels"], str(dataset_json)) if "labels" in meta else {}
    if labels is not None:
        declared = parse_labels(labels, "the labels given")
    for sub in ("imagesTr", "labelsTr"):
        if not (folder / sub).is_dir():
            raise InputError(f"{folder} has no {sub}/ folder: an nnU-Net v2 raw dataset needs imagesTr/ and labelsTr/.")

    stray: dict[Path, str] = {}
    cases = _pair_nnunet(folder / "imagesTr", folder / "labelsTr", ending, stray)
    test_cases = []
    if (folder / "imagesTs").is_dir():
        test_cases = _pair_nnunet(folder / "imagesTs", folder / "labelsTs", ending, stray, labels_required=False)
    return DatasetSpec(folder, cases, declared, ending, test_cases, stray, _class_details(meta, dataset_json))


def _pair_nnunet(
    images_dir: Path, labels_dir: Path, ending: str, stray: dict[Path, str], labels_required: bool = True
) -> list[Case]:
    """Cases from ``images_dir/CASE_0000<ending>`` and ``labels_dir/CASE<ending>``; misfits go to ``stray``."""
    images: dict[str, Path] = {}
    for entry in _visible_entries(images_dir):
        stem = entry.name[: -len(ending)] if entry.name.endswith(ending) else None
        match = _NNUNET_IMAGE.match(stem) if stem is not None and entry.is_file() else None
        if match is None:
            stray[entry] = (
                f"not an image of this dataset: images must be files named CASE_0000{ending} (the dataset's "
                "file_ending); rename or remove it"
            )
        elif match["channel"] != "0000":
            stray[entry] = (
                f"channel {match['channel']} of case {match['case']}: MaskMed uses a single CT channel "
                f"(CASE_0000{ending}); remove the other channels"
            )
        else:
            images[match["case"]] = entry
    label_files: dict[str, Path] = {}
    for entry in _visible_entries(labels_dir):
        if entry.is_file() and entry.name.endswith(ending) and len(entry.name) > len(ending):
            label_files[entry.name[: -len(ending)]] = entry
        else:
            stray[entry] = f"not a label map of this dataset: label maps are files named CASE{ending}; remove it"
    names = sorted(set(images) | (set(label_files) if labels_required else set()))
    return [Case(n, images.get(n, images_dir / f"{n}_0000{ending}"), label_files.get(n)) for n in names]


def _visible_entries(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, editor swap files) are never data: ignore them rather than report them.
    if not folder.is_dir():
        return []
    return sorted(e for e in folder.iterdir() if not e.name.startswith("."))


def _load_json_list(path: Path, labels: dict[str, int] | None, label_mapping: LabelMapping | None) -> DatasetSpec:
    meta = _read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("cases"), list) or not meta["cases"]:
        raise InputError(
            f'{path} must hold a JSON object with a non-empty "cases" list, e.g. {{"labels": {{"liver": 1}}, '
            '"cases": [{"image": "ct/case1.nii.gz", "label": "labels/case1.nii.gz"}]} (paths relative to the file).'
        )
    if "channel_names" in meta or "modality" in meta:
        _check_channels(meta, path)
    base = path.parent
    cases = _cases_from_rows([_json_row(entry, path, i) for i, entry in enumerate(meta["cases"])], base, path)
    test_raw = meta.get("test", [])
    if not isinstance(test_raw, list):
        raise InputError(f'{path}: "test" must be a list of {{"image": ...}} entries.')
    test_cases = _cases_from_rows([_json_row(e, path, i, "test") for i, e in enumerate(test_raw)], base, path)
    if labels is not None:
        declared = parse_labels(labels, "the labels given")
    elif "labels" in meta:
        declared = parse_labels(meta["labels"], str(path))
    else:
        declared = labels_from_label_maps(cases, label_mapping)
    return DatasetSpec(base, cases, declared, _common_ending(cases), test_cases, {}, _class_details(meta, path))


def _class_details(meta: dict[str, Any], path: Path) -> dict[str, SegmentClass]:
    """The optional ``"maskmed_classes"``: [{"label", "name", "color", "terminology"}, ...] (checked as untrusted)."""
    from maskmed_core.untrusted import UntrustedValueError, check_sequence

    raw = meta.get("maskmed_classes")
    if raw is None:
        return {}
    try:
        entries = check_sequence(raw, "maskmed_classes", 0, 1000)
        classes = [SegmentClass.from_dict(entry, f"maskmed_classes[{i}]") for i, entry in enumerate(entries)]
    except UntrustedValueError as error:
        raise InputError(f"{path}: {error}") from None
    return {c.name: c for c in classes}


def _json_row(entry: Any, path: Path, index: int, key: str = "cases") -> dict[str, str | None]:
    if isinstance(entry, dict) and isinstance(entry.get("image"), str) and entry["image"].strip():
        label = entry.get("label")
        name = entry.get("name")
        if (label is not None and not isinstance(label, str)) or (name is not None and not isinstance(name, str)):
            raise InputError(f'{path}: "{key}"[{index}]: "label" and "name" must be text (or absent).')
        return {"image": entry["image"], "label": label or None, "name": name or None}
    raise InputError(f'{path}: "{key}"[{index}] must be an object with an "image" path, e.g. {{"image": "ct.nii.gz"}}.')


def _load_csv_list(path: Path, labels: dict[str, int] | None, label_mapping: LabelMapping | None) -> DatasetSpec:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path} could not be read as CSV ({error}).") from error
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "image" not in header or "label" not in header:
        raise InputError(
            f"{path} needs a header row with the columns image,label (and optionally name), then one row per case; "
            f"its first row is {','.join(rows[0]) if rows else '(empty file)'}."
        )
    column = {name: header.index(name) for name in ("image", "label", "name") if name in header}
    table = []
    for line, row in enumerate(rows[1:], start=2):
        cells = {k: (row[i].strip() if i < len(row) else "") for k, i in column.items()}
        if not cells["image"]:
            raise InputError(f"{path}, row {line}: the image column is empty; give the image path of each case.")
        table.append({"image": cells["image"], "label": cells["label"] or None, "name": cells.get("name") or None})
    if not table:
        raise InputError(f"{path} lists no cases: add one row per case below the header image,label.")
    cases = _cases_from_rows(table, path.parent, path)
    declared = (
        parse_labels(labels, "the labels given") if labels is not None else labels_from_label_maps(cases, label_mapping)
    )
    return DatasetSpec(path.parent, cases, declared, _common_ending(cases))


def _cases_from_rows(rows: list[dict[str, str | None]], base: Path, source: Path) -> list[Case]:
    """Cases from rows with image, label and name (paths relative to ``base``); names checked or derived, unique.

    A row without a label still becomes a case: a missing label is a case problem for check_dataset.
    """
    cases = []
    explicit: set[str] = set()
    for row in rows:
        image = _resolve(base, str(row["image"]))
        label = _resolve(base, row["label"]) if row["label"] else None
        name = row["name"]
        if name is not None:
            if not _CASE_NAME.match(name):
                raise InputError(
                    f"{source}: the case name {name!r} may only hold letters, digits, '.', '_' and '-' (it names "
                    "cache folders and reports)."
                )
            if name in explicit:
                raise InputError(f"{source}: the case name {name!r} is given twice; case names must be unique.")
            explicit.add(name)
        cases.append(Case(name or "", image, label))
    # Derived names (from the image file or DICOM folder name) get _2, _3… where they would collide.
    taken = set(explicit)
    for case in cases:
        if case.name:
            continue
        stem = _derived_name(case.image)
        name, number = stem, 1
        while name in taken:
            number += 1
            name = f"{stem}_{number}"
        taken.add(name)
        case.name = name
    return cases


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _derived_name(image: Path) -> str:
    name = image.name
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith("_0000"):
        name = name[: -len("_0000")]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "case"


def _common_ending(cases: list[Case]) -> str:
    endings = set()
    for case in cases:
        if case.label is not None:
            lower = case.label.name.lower()
            endings.add(next((s for s in VOLUME_SUFFIXES if lower.endswith(s)), case.label.suffix.lower()))
    return endings.pop() if len(endings) == 1 else ""


def labels_from_label_maps(cases: Iterable[Case], label_mapping: LabelMapping | None = None) -> dict[str, int]:
    """``class_<value>`` -> value for every non-zero value found in the cases' label maps (after the mapping).

    Unreadable or missing label maps are skipped here (``check_dataset`` reports them). Raises InputError when no
    label map holds a non-zero value.
    """
    found: set[int] = set()
    for case in cases:
        if case.label is None or not case.label.is_file():
            continue
        try:
            label = read_label_file(case.label)
        except InputError:
            continue
        if label_map_problem(label, str(case.label)) is None:
            found.update(mapped_values(label_values(sitk.GetArrayViewFromImage(label)), label_mapping))
    found.discard(0)
    if not found:
        raise InputError(
            "No class values were found in the label maps (all missing, unreadable or background only): give the "
            "classes as labels, e.g. --labels liver=1,spleen=2."
        )
    return {f"class_{value}": value for value in sorted(found)}


# --------------------------------------------------------------------------------------------------------------
# reading


def read_case(case: Case, label_mapping: LabelMapping | None = None) -> tuple[sitk.Image, sitk.Image | None]:
    """The case's image (as :func:`maskmed_core.io.read_image` gives it) and label map (None when it has none).

    The label map keeps its own stored grid and orientation (compare by physical position, not array index); with
    ``label_mapping`` its values are mapped (unlisted values -> 0) and it comes back as UInt8 or UInt16.
    Raises InputError for a missing or unreadable file, an image that is not a 3D CT volume, and a label map that
    is not one 3D integer volume.
    """
    image = read_image(case.image)
    label = read_label(case.label, label_mapping) if case.label is not None else None
    return image, label


def read_label(path: str | os.PathLike[str], label_mapping: LabelMapping | None = None) -> sitk.Image:
    """Read a label map, check that it is one 3D integer volume, and apply ``label_mapping`` (see ``read_case``)."""
    label = read_label_file(path)
    problem = label_map_problem(label, str(path))
    if problem:
        raise InputError(problem)
    if label_mapping is None:
        return label
    mapped = sitk.GetImageFromArray(apply_label_mapping(sitk.GetArrayViewFromImage(label), label_mapping))
    mapped.CopyInformation(label)
    return mapped


def read_label_file(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a label map file as stored (any pixel type or dimension); InputError when missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"The label map {path} does not exist: check the path.")
    lower = path.name.lower()
    if path.is_dir() or not lower.endswith(VOLUME_SUFFIXES):
        raise InputError(
            f"The label map {path} is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) "
            "file; label maps must be one of these (DICOM SEG is not read): convert it, e.g. in 3D Slicer."
        )
    # The image reader's checks that a hostile file cannot pass (a pipe or a device, a data file outside the header's
    # folder, a header claiming more voxels than the file or the memory holds), before ITK opens or allocates anything.
    # The last also finds a truncated file, whose missing voxels SimpleITK would fill with zeros without a word: for a
    # label map, silently erased organs.
    check_before_header(path)
    header = read_header(path)
    check_memory_budget(header, f"The label map {path}")
    check_voxel_data(path, header)
    return read_voxels(path)


def label_map_problem(label: sitk.Image, name: str) -> str | None:
    """Why ``label`` cannot be a label map (not 3D, several components, not integer-typed), or None."""
    size = " x ".join(str(n) for n in label.GetSize())
    if label.GetNumberOfComponentsPerPixel() != 1:
        return (
            f"The label map {name} has {label.GetNumberOfComponentsPerPixel()} values per voxel; a label map holds "
            "one integer class value per voxel: export it as a labelmap (e.g. in 3D Slicer: Export to labelmap)."
        )
    if label.GetDimension() != 3 or 1 in label.GetSize():
        return f"The label map {name} is not a 3D volume ({size} voxels); it must cover the whole 3D image."
    voxels = sitk.GetArrayViewFromImage(label)
    if voxels.dtype.kind not in "iu":
        return (
            f"The label map {name} is not integer-typed ({label.GetPixelIDTypeAsString()}); a label map holds whole "
            "class values: save it with an integer voxel type (e.g. UInt8 or UInt16), not as a float or "
            "probability map."
        )
    return None


def label_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of an integer label array, ascending (int64).

    A counting pass (np.bincount) for the usual small value ranges, which is several times faster than np.unique's
    sort on a large volume.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    if flat.dtype.kind not in "iu" or flat.dtype == np.uint64:
        return np.unique(flat).astype(np.int64)
    low, high = int(flat.min()), int(flat.max())
    if high - low > 1 << 20:
        return np.unique(flat).astype(np.int64)
    shifted = flat if low == 0 else np.subtract(flat, low, dtype=np.int64)
    return np.flatnonzero(np.bincount(shifted)).astype(np.int64) + low


def mapped_values(values: Iterable[int], label_mapping: LabelMapping | None) -> set[int]:
    """The label values that ``values`` become under ``label_mapping`` (identity when None)."""
    if label_mapping is None:
        return {int(v) for v in values}
    mapping = _int_mapping(label_mapping)
    return {mapping.get(int(v), 0) for v in values}


def apply_label_mapping(array: np.ndarray, label_mapping: LabelMapping) -> np.ndarray:
    """``array`` with each value v replaced by ``label_mapping.get(v, 0)``; UInt8 if every target fits, else UInt16."""
    label_mapping = _int_mapping(label_mapping)
    targets = list(label_mapping.values())
    if any(not 0 <= t <= MAX_LABEL_VALUE for t in targets):
        raise InputError(f"label_mapping targets must be in 0..{MAX_LABEL_VALUE}, got {sorted(set(targets))}")
    out_dtype = np.uint8 if max(targets, default=0) <= 255 else np.uint16
    array = np.asarray(array)
    values = label_values(array)
    if values.size == 0:
        return np.zeros(array.shape, dtype=out_dtype)
    low, high = int(values[0]), int(values[-1])
    if low >= 0 and high <= 1 << 20:
        # A lookup table indexed by the voxel values: one gather pass over the volume.
        table = np.zeros(high + 1, dtype=out_dtype)
        for source, target in label_mapping.items():
            if 0 <= source <= high:
                table[source] = target
        return table[array]
    unique, inverse = np.unique(array, return_inverse=True)
    table = np.array([label_mapping.get(int(v), 0) for v in unique], dtype=out_dtype)
    return table[inverse].reshape(array.shape)


def _int_mapping(label_mapping: LabelMapping) -> dict[int, int]:
    # A mapping read from JSON has text keys ("5": 6): compare numbers, not strings.
    return {int(source): int(target) for source, target in label_mapping.items()}
