"""Model files side by side on the held-out CT s0009 as given and under protocol changes: how a change of model holds
up when the scanner protocol differs from the CTs it learned from.

The changes, each applied to s0009 and its reference label map alike (the reference on the changed grid):
thicker slices (5 and 7.5 mm, linear for the CT, nearest for the labels), Gaussian noise of 60 HU (seed 0), the field
of view cut to its central 60 % in x and y, and every voxel +50 HU (another calibration). Scores as ``maskmed
evaluate``: Dice per class on the (changed) CT's grid, mean over the classes present in its reference. The first
model is the reference: every other model's row gives its mean and its change against the first, and the class it
loses most on. s0009 is never trained on; this script only scores (it must not choose a checkpoint).

With "as given" among the changes it ends with each other model's verdict under the default model's ship rule
(issue 25, recipes/default_model/README.md): a model replaces the first only if, on the CT as given, its mean is
higher and no class is more than MAX_CLASS_LOSS below the first's, and under every other change its mean is not lower.

    OMP_NUM_THREADS=1 nice -n 5 python3 -m benchmarks.protocol_shifts default runs/x/best.maskmed [...]
        [--changes "as given" ...] [--ct CT --labels LABELS --mapping MAPPING]  # ~15 s a model and change, one core
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import REPO, print_machine

DEMO = REPO / "maskmed_core" / "resources" / "demo"
S0009_CT = DEMO / "s0009_ct.nii.gz"
S0009_LABELS = DEMO / "s0009_totalseg.nii.gz"
S0009_MAPPING = DEMO / "amos15_from_totalseg_v2.json"
NOISE_HU = 60.0
HU_OFFSET = 50.0
FIELD_OF_VIEW_KEPT = 0.6
AS_GIVEN = "as given"
MAX_CLASS_LOSS = 0.03  # the ship rule's largest loss of one class on the CT as given (Dice)


def _thicker_slices(millimetres: float) -> Callable:
    def change(image, labels):
        import SimpleITK as sitk  # noqa: N813

        spacing = (*image.GetSpacing()[:2], millimetres)
        size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
        grid = sitk.Image(size, sitk.sitkFloat32)
        grid.SetSpacing(spacing)
        grid.SetOrigin(image.GetOrigin())
        grid.SetDirection(image.GetDirection())
        return (sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID()),
                sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID()))
    return change


def _noise(image, labels):
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array += np.random.default_rng(0).normal(0.0, NOISE_HU, array.shape).astype(np.float32)
    noisy = sitk.GetImageFromArray(array)
    noisy.CopyInformation(image)
    return noisy, labels


def _central_field_of_view(image, labels):
    size = image.GetSize()
    start = [int(round(n * (1 - FIELD_OF_VIEW_KEPT) / 2)) for n in size[:2]]
    stop = [s + int(round(n * FIELD_OF_VIEW_KEPT)) for s, n in zip(start, size[:2], strict=True)]
    return (image[start[0]:stop[0], start[1]:stop[1], :], labels[start[0]:stop[0], start[1]:stop[1], :])


def _hu_offset(image, labels):
    import SimpleITK as sitk  # noqa: N813

    return sitk.Cast(image, sitk.sitkFloat32) + HU_OFFSET, labels


CHANGES: dict[str, Callable | None] = {
    AS_GIVEN: None,
    "5 mm slices": _thicker_slices(5.0),
    "7.5 mm slices": _thicker_slices(7.5),
    f"noise {NOISE_HU:g} HU": _noise,
    f"central {FIELD_OF_VIEW_KEPT:.0%} field of view": _central_field_of_view,
    f"+{HU_OFFSET:g} HU": _hu_offset,
}


def read_case(ct: Path, reference: Path, mapping: Path):
    """The CT and its reference label map (mapped to the models' label values) on the CT's grid."""
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.io import read_image
    from maskmed_core.label_mapping import read_label_mapping
    from maskmed_core.training.dataset import read_label

    image = read_image(str(ct))
    labels = read_label(str(reference), read_label_mapping(mapping))
    return image, sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def score(predictor, image, labels) -> dict[str, float]:
    """Dice per class present in the reference ``labels`` (on ``image``'s grid), as ``maskmed evaluate`` scores it."""
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.evaluation import class_scores, scores_in_reference

    result = predictor.predict(image)
    prediction = sitk.GetArrayFromImage(result.label_map())
    spacing_zyx = tuple(float(s) for s in image.GetSpacing()[::-1])
    scores = class_scores(prediction, sitk.GetArrayFromImage(labels), {c.name: c.label for c in result.classes},
                          spacing_zyx)
    return {name: entry["dice"] for name, entry in scores_in_reference(scores).items()}


def mean_dice(scores: dict[str, float]) -> float:
    """Mean Dice over the classes of ``scores`` (0 for none)."""
    return sum(scores.values()) / len(scores) if scores else 0.0


def ship_verdict(reference: dict[str, dict[str, float]], candidate: dict[str, dict[str, float]]) -> list[str]:
    """Why ``candidate`` may not replace ``reference`` under the ship rule (module docstring); [] when it may.
    Both map a change's name to Dice per class present (the reference's classes count; one the candidate lacks
    scores 0, as a missed class does)."""
    given, other = reference[AS_GIVEN], candidate[AS_GIVEN]
    reasons = []
    if mean_dice(other) <= mean_dice(given):
        reasons.append(f"{AS_GIVEN}: mean {mean_dice(other):.3f}, not above {mean_dice(given):.3f}")
    for name, dice in given.items():
        if other.get(name, 0.0) < dice - MAX_CLASS_LOSS:
            reasons.append(f"{AS_GIVEN}: {name} {other.get(name, 0.0):.3f} against {dice:.3f}")
    for change in (name for name in reference if name != AS_GIVEN):  # in the order the changes were scored
        if mean_dice(candidate[change]) < mean_dice(reference[change]):
            reasons.append(f"{change}: mean {mean_dice(candidate[change]):.3f} below "
                           f"{mean_dice(reference[change]):.3f}")
    return reasons


def main() -> None:
    from maskmed_core import bundled

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model files ('default': the bundled one), the first the reference")
    parser.add_argument("--changes", nargs="+", choices=list(CHANGES), default=list(CHANGES))
    parser.add_argument("--ct", type=Path, default=S0009_CT, help="another labelled CT instead of s0009")
    parser.add_argument("--labels", type=Path, default=S0009_LABELS, help="its label map")
    parser.add_argument("--mapping", type=Path, default=S0009_MAPPING,
                        help="the label map's values to the models' (default: TotalSegmentator v2 to AMOS)")
    args = parser.parse_args()
    from maskmed_core.inference import Predictor

    models = [bundled.DEFAULT_MODEL if m == "default" else Path(m) for m in args.models]
    predictors = [Predictor.from_file(model, "cpu") for model in models]
    given = read_case(args.ct, args.labels, args.mapping)
    print_machine()
    print("| change | " + " | ".join(f"{m.parent.name}/{m.name}" for m in models) + " | largest class loss |")
    print("| --- " * (len(models) + 2) + "|")
    scored: list[dict[str, dict[str, float]]] = [{} for _ in models]  # per model: change -> Dice per class
    for name in args.changes:
        change = CHANGES[name]
        image, labels = given if change is None else change(*given)
        per_model = [score(predictor, image, labels) for predictor in predictors]
        if not per_model[0]:
            print(f"| {name} | none of the first model's classes is in the reference |")
            continue
        for model_scores, dice in zip(scored, per_model, strict=True):
            model_scores[name] = dice
        means = [mean_dice(d) for d in per_model]
        cells = [f"{means[0]:.3f}"] + [f"{m:.3f} ({m - means[0]:+.3f})" for m in means[1:]]
        losses = []
        for other in per_model[1:]:  # a class the other model lacks counts 0, as a missed class does
            worst = min(per_model[0], key=lambda c, o=other: o.get(c, 0.0) - per_model[0][c])
            losses.append(f"{worst} {other.get(worst, 0.0) - per_model[0][worst]:+.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(losses) or '-'} |", flush=True)
    if AS_GIVEN not in scored[0]:
        return
    print(f"\nShip rule against {models[0].name} (issue 25):")
    for model, model_scores in zip(models[1:], scored[1:], strict=True):
        reasons = ship_verdict(scored[0], model_scores)
        print(f"- {model.parent.name}/{model.name}: " + ("passes" if not reasons else "fails: " + "; ".join(reasons)))


if __name__ == "__main__":
    main()
