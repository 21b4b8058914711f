"""Rebuild ``maskmed_core/resources/ct_synthesis_priors.json``: per TotalSegmentator v2 class, HU priors by phase.

    python -m maskmed_core.training.fit_synthesis_priors CT LABELS [CT LABELS ...] [-o PRIORS.json]

Each (CT, label map) pair is measured: per class present, the median HU and the within-class spread (1.4826 x
median absolute deviation) on the class eroded by one voxel (partial volume at the border would pull both towards
the neighbours). A scan's phase is read off its aorta: median above 250 HU arterial, above 130 HU portal venous,
else native. The measured median of a class in a phase is averaged with the literature median below and the
between-scan spread widened to cover both, so that two or three scans do not narrow the prior to themselves; the
other phases keep the literature values (enhancement in HU, typical adult contrast CT: Bae, Radiology 2010;
Heiken et al., Radiology 1993 for the liver; kidney corticomedullary vs nephrographic phase values from standard
CT texts). Never give it the held-out validation case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from maskmed_core.atomic import atomic_path
from maskmed_core.training.synthesis import PRIORS_FILE

Prior = tuple[float, float]  # (median HU, between-scan spread HU)

# group -> (native, arterial, portal, texture): the default of every class in that group.
GROUP_DEFAULTS: dict[str, tuple[Prior, Prior, Prior, float]] = {
    "lung": ((-860.0, 40.0), (-860.0, 40.0), (-860.0, 40.0), 40.0),
    "airway": ((-990.0, 10.0), (-990.0, 10.0), (-990.0, 10.0), 10.0),
    "bone": ((260.0, 70.0), (270.0, 70.0), (270.0, 70.0), 60.0),
    "cartilage": ((130.0, 30.0), (140.0, 30.0), (140.0, 30.0), 25.0),
    "muscle": ((50.0, 6.0), (58.0, 8.0), (65.0, 8.0), 12.0),
    "artery": ((42.0, 6.0), (320.0, 70.0), (170.0, 30.0), 15.0),
    "vein": ((40.0, 6.0), (110.0, 40.0), (165.0, 25.0), 15.0),
    "heart": ((42.0, 6.0), (280.0, 70.0), (160.0, 25.0), 20.0),
    "organ": ((45.0, 10.0), (90.0, 20.0), (110.0, 20.0), 12.0),
    "kidney": ((33.0, 6.0), (190.0, 30.0), (165.0, 25.0), 14.0),
    "fluid": ((9.0, 7.0), (9.0, 7.0), (10.0, 7.0), 8.0),
    "bowel": ((38.0, 8.0), (75.0, 15.0), (90.0, 15.0), 15.0),
    "nervous": ((35.0, 5.0), (36.0, 5.0), (37.0, 5.0), 6.0),
    "gland": ((95.0, 15.0), (180.0, 40.0), (150.0, 30.0), 15.0),
}
# class-specific literature values where they differ from the group: id -> (native, arterial, portal, texture)
CLASS_OVERRIDES: dict[int, tuple[Prior, Prior, Prior, float]] = {
    5: ((58.0, 8.0), (80.0, 15.0), (115.0, 15.0), 12.0),  # liver
    1: ((48.0, 6.0), (120.0, 25.0), (125.0, 15.0), 12.0),  # spleen
    7: ((42.0, 8.0), (110.0, 20.0), (95.0, 15.0), 14.0),  # pancreas
    8: ((30.0, 10.0), (70.0, 20.0), (65.0, 15.0), 15.0),  # right adrenal
    9: ((30.0, 10.0), (70.0, 20.0), (65.0, 15.0), 15.0),  # left adrenal
    22: ((38.0, 6.0), (70.0, 15.0), (75.0, 15.0), 12.0),  # prostate
}
GAS_FRACTION = {6: 0.35, 15: 0.15, 18: 0.1, 19: 0.15, 20: 0.45}


def group_of(value: int) -> str | None:
    """The tissue group of a TotalSegmentator v2 id (None: an id this table does not know)."""
    groups = {
        "organ": {1, 5, 7, 8, 9, 22}, "kidney": {2, 3}, "fluid": {4, 21, 23, 24}, "lung": {10, 11, 12, 13, 14},
        "bowel": {6, 15, 18, 19, 20}, "airway": {16}, "gland": {17}, "heart": {51, 61},
        "artery": {52, 53, 54, 55, 56, 57, 58, 65, 66}, "vein": {59, 60, 62, 63, 64, 67, 68},
        "nervous": {79, 90}, "muscle": set(range(80, 90)), "cartilage": {117},
        "bone": set(range(25, 51)) | set(range(69, 79)) | set(range(91, 117)),
    }
    for group, values in groups.items():
        if value in values:
            return group
    return None


def literature_priors(names: dict[int, str]) -> dict[int, dict]:
    classes = {}
    for value, name in sorted(names.items()):
        group = group_of(value)
        if group is None:
            continue
        native, arterial, portal, texture = CLASS_OVERRIDES.get(value, GROUP_DEFAULTS[group])
        classes[value] = {
            "name": name, "group": group, "native": list(native), "arterial": list(arterial),
            "portal": list(portal), "texture": texture, "gas_fraction": GAS_FRACTION.get(value, 0.0),
        }
    return classes


def measure(image_hu: np.ndarray, labels: np.ndarray, min_voxels: int = 30) -> dict[int, tuple[float, float, int]]:
    """Class value -> (median HU, within-class spread HU, voxels measured), on each class eroded by one voxel."""
    from scipy import ndimage

    found = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        eroded = ndimage.binary_erosion(mask)
        use = eroded if eroded.sum() >= min_voxels else mask
        if use.sum() < min_voxels:
            continue
        voxels = image_hu[use].astype(np.float64)
        median = float(np.median(voxels))
        spread = float(1.4826 * np.median(np.abs(voxels - median)))
        found[int(value)] = (median, spread, int(use.sum()))
    return found


def phase_of(measured: dict[int, tuple[float, float, int]]) -> str:
    aorta = measured.get(52)
    if aorta is None:
        return "native"
    return "arterial" if aorta[0] > 250 else "portal" if aorta[0] > 130 else "native"


def fit(pairs: list[tuple[str, str]], names: dict[int, str]) -> dict:
    import SimpleITK as sitk  # noqa: N813  (imported here: the synthesis itself needs no SimpleITK)

    from maskmed_core.io import read_image, to_canonical

    classes = literature_priors(names)
    measured_by_phase: dict[str, dict[int, list[tuple[float, float]]]] = {}
    scans = []
    for image_path, label_path in pairs:
        image = to_canonical(read_image(image_path))
        label = sitk.Resample(sitk.ReadImage(str(label_path)), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        measured = measure(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label))
        phase = phase_of(measured)
        scans.append({"image": Path(image_path).name, "labels": Path(label_path).name, "phase": phase,
                      "classes_measured": len(measured)})
        for value, (median, spread, _) in measured.items():
            measured_by_phase.setdefault(phase, {}).setdefault(value, []).append((median, spread))
    for phase, values in measured_by_phase.items():
        for value, found in values.items():
            if value not in classes:
                continue
            entry = classes[value]
            literature_median, literature_spread = entry[phase]
            data_median = float(np.mean([m for m, _ in found]))
            median = 0.5 * (data_median + literature_median)
            spread = max(literature_spread, abs(data_median - literature_median) / 2)
            entry[phase] = [round(median, 1), round(spread, 1)]
            within = float(np.mean([s for _, s in found]))
            entry["texture"] = round(float(np.clip(0.5 * (within + entry["texture"]), 5.0, 80.0)), 1)
    return {
        "description": "HU priors per TotalSegmentator v2 class and contrast phase for CT synthesis: "
        "[median, between-scan spread] in HU; texture = within-class spread (HU). "
        "Rebuilt by python -m maskmed_core.training.fit_synthesis_priors.",
        "source": {"scans": scans, "literature": "see maskmed_core/training/fit_synthesis_priors.py"},
        "body": {"fat": [-100.0, 15.0], "soft_tissue": [40.0, 10.0]},
        "classes": {str(k): v for k, v in sorted(classes.items())},
    }


def read_class_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="*", help="CT LABELS [CT LABELS ...] (TotalSegmentator v2 ids)")
    parser.add_argument("--class-names", type=Path, required=True, help="totalseg_v2_classes.tsv (id<TAB>name)")
    parser.add_argument("-o", "--output", type=Path, default=PRIORS_FILE)
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give CT and label map in pairs")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    if any("s0009" in Path(p).name for pair in pairs for p in pair):
        print("refusing: s0009 is the held-out validation case and must not shape the priors", file=sys.stderr)
        return 2
    priors = fit(pairs, read_class_names(args.class_names))
    with atomic_path(args.output) as temporary:  # the bundled priors file is replaced whole or not at all
        temporary.write_text(json.dumps(priors, indent=1) + "\n", encoding="utf-8")
    for scan in priors["source"]["scans"]:
        print(f"{scan['image']}: {scan['phase']}, {scan['classes_measured']} classes measured")
    print(f"wrote {args.output} ({len(priors['classes'])} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
