"""Segmentation metrics shared by ``maskmed evaluate``, the tests and the benchmarks: per-class Dice and HD95, and
the checks that a reference label map can be scored against an image at all (``check_reference``).

Label maps are integer arrays (z, y, x) on one grid; a class is a label value. HD95 is MONAI's
``compute_hausdorff_distance(..., percentile=95)``: the symmetric 95th percentile of surface distances, in millimetres
(``spacing_zyx``). A class the reference has and the prediction misses scores Dice 0 and no HD95 (never a made-up
distance); a class only in the prediction likewise ("false_positive"); classes in neither are left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

ClassScores = dict[str, dict[str, Any]]  # class name -> {"dice": float, "hd95": float | None, "status": str}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks of one shape (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]) -> float | None:
    """95th-percentile symmetric Hausdorff distance (mm) of two non-empty boolean masks; None if either is empty."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    if not prediction.any() or not reference.any():
        return None
    with warnings.catch_warnings():  # MONAI's own deprecation notice about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(np.ascontiguousarray(prediction))[None, None],
            torch.from_numpy(np.ascontiguousarray(reference))[None, None],
            include_background=True, percentile=95, spacing=[float(s) for s in spacing_zyx],
        )
    value = float(distance.item())
    return value if math.isfinite(value) else None


def class_scores(
    prediction: np.ndarray, reference: np.ndarray, classes: Mapping[str, int], spacing_zyx: Sequence[float]
) -> ClassScores:
    """Per-class Dice and HD95 of a predicted vs a reference label map (same shape; ``classes``: name -> value).

    status: "both" (Dice and HD95), "missed" (in the reference only: Dice 0, HD95 None) or "false_positive" (in the
    prediction only: Dice 0, HD95 None). Classes absent from both are left out.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ")
    scores: ClassScores = {}
    for name, value in classes.items():
        predicted, expected = prediction == value, reference == value
        in_prediction, in_reference = bool(predicted.any()), bool(expected.any())
        if not in_prediction and not in_reference:
            continue
        status = "both" if in_prediction and in_reference else "missed" if in_reference else "false_positive"
        scores[name] = {
            "dice": dice(predicted, expected),
            "hd95": hd95(predicted, expected, spacing_zyx) if status == "both" else None,
            "status": status,
        }
    return scores


def scores_in_reference(scores: ClassScores) -> ClassScores:
    """The scores of the classes the reference holds (found or missed): the classes every mean is taken over."""
    return {name: score for name, score in scores.items() if score["status"] != "false_positive"}


def summarize(scores: ClassScores) -> dict[str, Any]:
    """Means over the classes of the reference (missed ones count Dice 0): mean Dice, mean HD95 over the classes
    that have one, and how many classes each mean covers."""
    in_reference = scores_in_reference(scores)
    distances = [s["hd95"] for s in in_reference.values() if s["hd95"] is not None]
    return {
        "mean_dice": float(np.mean([s["dice"] for s in in_reference.values()])) if in_reference else None,
        "mean_hd95": float(np.mean(distances)) if distances else None,
        "classes_in_reference": len(in_reference),
        "classes_with_hd95": len(distances),
        "missed_classes": sorted(n for n, s in in_reference.items() if s["status"] == "missed"),
        "false_positive_classes": sorted(n for n, s in scores.items() if s["status"] == "false_positive"),
    }


def format_scores(scores: ClassScores, class_order: Sequence[str]) -> list[str]:
    """One line per class (in ``class_order``; "-" where absent from both) and the means."""
    lines = [f"  {'class':24s} {'Dice':>6s} {'HD95 mm':>8s}"]
    for name in class_order:
        score = scores.get(name)
        if score is None:
            lines.append(f"  {name:24s} {'-':>6s} {'-':>8s}")
            continue
        distance = "-" if score["hd95"] is None else f"{score['hd95']:.1f}"
        note = {"missed": "  (missed)", "false_positive": "  (not in the reference)"}.get(score["status"], "")
        lines.append(f"  {name:24s} {score['dice']:6.3f} {distance:>8s}{note}")
    summary = summarize(scores)
    if summary["mean_dice"] is not None:
        hd = "-" if summary["mean_hd95"] is None else f"{summary['mean_hd95']:.1f}"
        lines.append(f"  {'mean (in reference)':24s} {summary['mean_dice']:6.3f} {hd:>8s}"
                     f"  ({summary['classes_in_reference']} classes; HD95 over {summary['classes_with_hd95']})")
    return lines


def physical_box(image) -> tuple[np.ndarray, np.ndarray]:
    """The (low, high) corners (LPS mm) of the axis-aligned box around an image's voxels (each voxel's full extent,
    index -0.5 to size - 0.5), whatever its direction: two grids of one region give the same box."""
    size, spacing = np.array(image.GetSize(), float), np.array(image.GetSpacing(), float)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    corners = np.array([[-0.5 + (size[a] if (k >> a) & 1 else 0.0) for a in range(3)] for k in range(8)])
    points = np.array(image.GetOrigin(), float) + (corners * spacing) @ direction.T
    return points.min(0), points.max(0)


def check_reference(image, reference, class_values: Collection[int], mapped: bool) -> list[str]:
    """Warnings about scoring the label map ``reference`` against ``image`` (SimpleITK images), or InputError when
    it cannot be scored at all.

    Geometry: the reference is matched to the image by physical position, so a reference whose box lies elsewhere
    (another origin, e.g. shifted 30 mm; another extent) is scored only where the two overlap: a warning with the
    offset, InputError when they do not overlap at all. Labels (when no ``--label-mapping`` was applied, ``mapped``
    False): values that no class of the model has (``class_values``) are scored as background; when they are most
    of the reference's values it uses another labelling (e.g. TotalSegmentator ids, 1..117): InputError.
    """
    from maskmed_core.io.errors import InputError

    warnings_found = []
    image_low, image_high = physical_box(image)
    reference_low, reference_high = physical_box(reference)
    describe = (f"image box {np.round(image_low, 1).tolist()} to {np.round(image_high, 1).tolist()} mm, reference box "
                f"{np.round(reference_low, 1).tolist()} to {np.round(reference_high, 1).tolist()} mm (LPS)")
    if (np.minimum(image_high, reference_high) <= np.maximum(image_low, reference_low)).any():
        raise InputError(f"the reference label map and the image do not overlap in space ({describe}): they do not "
                         "belong together; give the label map made for this image")
    offset = float(np.abs(np.concatenate([image_low - reference_low, image_high - reference_high])).max())
    tolerance = max(max(image.GetSpacing()), max(reference.GetSpacing()))  # one voxel of the coarser grid
    if offset > tolerance:
        warnings_found.append(
            f"the reference label map does not cover the same region as the image: their boxes differ by up to "
            f"{offset:.1f} mm ({describe}); it is matched by physical position and scored only where the two "
            "overlap, so if it was made for this image with another origin or spacing the scores are wrong: check "
            "that its header matches the image's"
        )
    if not mapped:
        import SimpleITK as sitk  # noqa: N813

        values = np.unique(sitk.GetArrayViewFromImage(reference))  # any integer type, negative values included
        values = values[values != 0]
        unknown = sorted(set(values.tolist()) - set(class_values))
        listed = ", ".join(map(str, unknown[:12])) + (", ..." if len(unknown) > 12 else "")
        if unknown and 2 * len(unknown) > len(values):
            raise InputError(
                f"{len(unknown)} of the reference's {len(values)} label values ({listed}) are not label values of "
                "the model's classes: it uses another labelling (TotalSegmentator ids, for example); give "
                "--label-mapping FILE to map its values to the model's (for TotalSegmentator v2 ids and the "
                "default model: amos15_from_totalseg_v2.json, bundled in maskmed_core/resources/demo)"
            )
        if unknown:
            warnings_found.append(f"the reference's label values {listed} are not label values of the model's "
                                  "classes and are scored as background (give --label-mapping to map them)")
    return warnings_found
