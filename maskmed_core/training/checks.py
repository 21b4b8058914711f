"""Checking a training dataset before any heavy work, and one report of everything that is wrong.

Every case is checked (a check never stops at the first bad case), so the user fixes the whole dataset in one
round: missing or stray files, unreadable or non-3D images, label maps that are not integer-typed, label values
that the dataset does not declare, and label maps on another physical grid than their image.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from maskmed_core.io import InputError, read_image, to_canonical
from maskmed_core.training.dataset import (
    Case,
    DatasetSpec,
    LabelMapping,
    label_map_problem,
    label_values,
    mapped_values,
    read_label_file,
)

_MAX_VALUES_SHOWN = 20


@dataclass(frozen=True)
class CaseProblem:
    """One problem of one case. ``case``: the case name (or, for a file that belongs to no case, its path)."""

    case: str
    problem: str


def check_dataset(
    spec: DatasetSpec,
    label_mapping: LabelMapping | None = None,
    grid_tolerance_mm: float = 0.5,
    spacing_rtol: float = 1e-3,
    direction_atol: float = 1e-3,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[CaseProblem]:
    """All problems of the dataset's training cases (an empty list: the dataset is fine).

    label_mapping: applied to the label values before comparing them with ``spec.labels`` (as in training).
    grid_tolerance_mm: how far (mm) the label map's origin may lie from the image's, after both are reoriented to
        the canonical (LPS-closest) axis order; label maps written by other tools round the geometry, e.g. NIfTI
        stores it in float32.
    spacing_rtol: relative tolerance on the voxel spacing; direction_atol: absolute tolerance on direction cosines.
    progress: called after each case with (cases done, number of cases, case name).

    Grids are compared in physical terms: a label map stored with other axis order or flips (e.g. LAS next to an
    LPS DICOM series) passes when its voxels lie where the image's voxels are.
    """
    problems = [CaseProblem(_relative(path, spec), why) for path, why in spec.stray_files.items()]
    for index, case in enumerate(spec.cases):
        problems.extend(
            CaseProblem(case.name, text)
            for text in check_case(case, spec.labels, label_mapping, grid_tolerance_mm, spacing_rtol, direction_atol)
        )
        if progress is not None:
            progress(index + 1, len(spec.cases), case.name)
    return problems


def check_case(
    case: Case,
    labels: dict[str, int],
    label_mapping: LabelMapping | None = None,
    grid_tolerance_mm: float = 0.5,
    spacing_rtol: float = 1e-3,
    direction_atol: float = 1e-3,
) -> list[str]:
    """The problems of one training case, as texts (see :func:`check_dataset`)."""
    found: list[str] = []
    image = label = None
    if not case.image.exists():
        without = f" (its label map {case.label} has no image)" if case.label is not None else ""
        found.append(f"The image {case.image} is missing{without}: add the image, or remove the case.")
    else:
        try:
            image = read_image(case.image)
        except (InputError, RuntimeError) as error:
            found.append(str(error))
    if case.label is None:
        found.append(
            f"No label map for the image {case.image}: every training case needs one; add it, or remove the case."
        )
    else:
        try:
            label = read_label_file(case.label)
        except (InputError, RuntimeError) as error:
            found.append(str(error))
    if label is None:
        return found
    problem = label_map_problem(label, str(case.label))
    if problem is not None:
        found.append(problem)
    else:
        undeclared = _undeclared_values(label, labels, label_mapping)
        if undeclared:
            found.append(_undeclared_text(case, undeclared, labels, label_mapping))
    if image is not None and label.GetDimension() == 3 and label.GetNumberOfComponentsPerPixel() == 1:
        difference = grid_difference(image, label, grid_tolerance_mm, spacing_rtol, direction_atol)
        if difference is not None:
            found.append(
                f"The label map {case.label} is not on the image's grid: {difference}. A label map must cover its "
                "image voxel for voxel (same size, spacing, origin and direction; axis order and flips may differ): "
                "check that it belongs to this image, or resample it onto the image (nearest neighbour)."
            )
    return found


def grid_difference(
    image: sitk.Image,
    label: sitk.Image,
    tolerance_mm: float = 0.5,
    spacing_rtol: float = 1e-3,
    direction_atol: float = 1e-3,
) -> str | None:
    """How the label map's physical grid differs from the image's, or None when they agree.

    Both are brought to the canonical axis order first (permute/flip only), so e.g. an LAS-stored label map of an
    LPS image agrees; then size (voxels), spacing (relative tolerance), direction and origin (mm) are compared.
    """
    a, b = to_canonical(image), to_canonical(label)
    if a.GetSize() != b.GetSize():
        return f"it has {_xyz(b.GetSize())} voxels, the image {_xyz(a.GetSize())} (x, y, z, in LPS order)"
    if not np.allclose(b.GetSpacing(), a.GetSpacing(), rtol=spacing_rtol, atol=0):
        return (
            f"its spacing is {_xyz(b.GetSpacing(), '.4g')} mm, the image's {_xyz(a.GetSpacing(), '.4g')} mm "
            "(x, y, z, in LPS order)"
        )
    if not np.allclose(b.GetDirection(), a.GetDirection(), rtol=0, atol=direction_atol):
        return "its axes point in other directions than the image's (the direction cosines differ)"
    distance = float(np.linalg.norm(np.subtract(b.GetOrigin(), a.GetOrigin())))
    if distance > tolerance_mm:
        return f"it is shifted by {distance:.3g} mm against the image (more than {tolerance_mm:g} mm)"
    return None


def format_report(problems: list[CaseProblem]) -> str:
    """One readable report: every problem grouped by case (in the order found), then what to do."""
    if not problems:
        return "The dataset check found no problems."
    grouped: dict[str, list[str]] = {}
    for item in problems:
        grouped.setdefault(item.case, []).append(item.problem)
    count = len(problems)
    lines = [
        f"The dataset check found {count} problem{'s' if count != 1 else ''} in {len(grouped)} "
        f"case{'s' if len(grouped) != 1 else ''} or file{'s' if len(grouped) != 1 else ''}:",
        "",
    ]
    for case, texts in grouped.items():
        lines.append(f"{case}:")
        for text in texts:
            lines.append(
                textwrap.fill(
                    text,
                    width=110,
                    initial_indent="  - ",
                    subsequent_indent="    ",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
        lines.append("")
    lines.append(
        textwrap.fill(
            "What to do: fix the files listed above and run again, or run with --skip-bad-cases to leave the cases "
            "listed out of training (stray files are then ignored).",
            width=110,
        )
    )
    return "\n".join(lines)


def without_bad_cases(spec: DatasetSpec, problems: list[CaseProblem]) -> DatasetSpec:
    """A copy of ``spec`` without the cases named in ``problems`` and without its stray files (--skip-bad-cases)."""
    bad = {item.case for item in problems}
    return replace(spec, cases=[c for c in spec.cases if c.name not in bad], stray_files={})


def _undeclared_values(label: sitk.Image, labels: dict[str, int], label_mapping: LabelMapping | None) -> list[int]:
    present = mapped_values(label_values(sitk.GetArrayViewFromImage(label)), label_mapping)
    return sorted(present - {0} - set(labels.values()))


def _undeclared_text(
    case: Case, undeclared: list[int], labels: dict[str, int], label_mapping: LabelMapping | None
) -> str:
    shown = ", ".join(str(v) for v in undeclared[:_MAX_VALUES_SHOWN])
    if len(undeclared) > _MAX_VALUES_SHOWN:
        shown += f", … ({len(undeclared)} values)"
    declared = sorted(labels.items(), key=lambda item: item[1])
    declared_text = ", ".join(f"{v} {n}" for n, v in declared[:_MAX_VALUES_SHOWN])
    if len(declared) > _MAX_VALUES_SHOWN:
        declared_text += f", … ({len(declared)} classes)"
    mapped = " after the label mapping" if label_mapping is not None else ""
    return (
        f"The label map {case.label} holds the values {shown}{mapped}, which the dataset's labels do not declare "
        f"(declared: {declared_text}): declare these classes, or fix the label map."
    )


def _relative(path: Path, spec: DatasetSpec) -> str:
    try:
        return str(path.relative_to(spec.root))
    except ValueError:
        return str(path)


def _xyz(values, fmt: str = "d") -> str:
    return " x ".join(format(v, fmt) for v in values)
