"""The left-right mirrored image warning (``maskmed_core.inference.laterality``) on every real CT we have.

Each CT is segmented by the bundled default model as given and mirrored (its voxel array flipped along the index
x axis, the header kept: what a converter that wrote the wrong sign on the left-right axis produces). For each
run: whether the mirrored-image warning was given, what the rule saw (liver + spleen in mL, the fraction of it
left of the body's midline), and what the check cost: its own time inside ``Predictor.predict`` (the body mask
and ``check_mirrored``, timed by wrapping the two functions the Predictor calls) as a percentage of the rest of
the predict. The check's first call builds the float copy of the result's masks that the label map reuses right
after, so the percentage is an upper bound of what a ``maskmed predict`` run adds. Goal: no warning on any CT as
given, a warning on every mirrored CT with liver and spleen in view, under 10 % of a predict.

CTs (``../shared/data``, see its README; files with identical bytes are run once): the bundled held-out s0009
(= totalseg_subjects/s0009_ct.nii.gz), ct/abdomen_ct_3mm (= the bundled demo CT), the DICOM series
ct/chest_abdomen_dicom, and totalseg_subjects s0002 (neck-thorax) and s0003 (spine): the last two show no liver or
spleen, so the rule must stay silent on them either way. One thread (``OMP_NUM_THREADS=1``), in this process.

    OMP_NUM_THREADS=1 nice -n 5 python3 -m benchmarks.mirrored [--cases N]  # about 2 minutes on an idle core
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import REPO, SHARED_DATA, print_machine

COST_GOAL_PERCENT = 10.0


def real_cts() -> list[tuple[str, Path]]:
    """(name, path) of every real CT: the bundled ones, ../shared/data/ct and totalseg_subjects/*_ct.nii.gz; a file
    whose bytes equal an earlier one's is left out (its name is kept in the first one's)."""
    candidates = [
        ("s0009 (bundled held-out CT)", REPO / "maskmed_core" / "resources" / "demo" / "s0009_ct.nii.gz"),
        ("abdomen_ct_3mm (bundled demo CT)", REPO / "maskmed_core" / "resources" / "demo" / "abdomen_ct_3mm.nii.gz"),
        ("ct/abdomen_ct_3mm", SHARED_DATA / "ct" / "abdomen_ct_3mm.nii.gz"),
        ("ct/chest_abdomen_dicom (DICOM series)", SHARED_DATA / "ct" / "chest_abdomen_dicom"),
        *((f"totalseg_subjects/{p.name.split('_')[0]}", p)
          for p in sorted((SHARED_DATA / "totalseg_subjects").glob("*_ct.nii.gz"))),
    ]
    seen: dict[str, int] = {}
    cases: list[tuple[str, Path]] = []
    for name, path in candidates:
        if not path.exists():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else str(path)
        if digest in seen:
            first_name, first_path = cases[seen[digest]]
            cases[seen[digest]] = (f"{first_name} = {name}", first_path)
            continue
        seen[digest] = len(cases)
        cases.append((name, path))
    return cases


@dataclass
class Row:
    case: str
    mirrored: bool
    warned: bool
    organ_ml: float | None
    left_fraction: float | None
    predict_s: float
    check_s: float

    @property
    def cost_percent(self) -> float:
        return 100.0 * self.check_s / (self.predict_s - self.check_s)


def mirror(image):
    """The same header with the voxel array flipped along the index x axis."""
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    flipped = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
    flipped.CopyInformation(image)
    return flipped


def measure(predictor, name: str, image, mirrored: bool) -> Row:
    from maskmed_core.inference import laterality
    from maskmed_core.inference import predictor as predictor_module

    seen: dict = {"seconds": 0.0}

    def timed(function, key):
        def wrapper(*args):
            start = time.perf_counter()
            value = function(*args)
            seen["seconds"] += time.perf_counter() - start
            seen[key] = (args, value)
            return value
        return wrapper

    original = predictor_module.body_mask, predictor_module.check_mirrored
    predictor_module.body_mask = timed(laterality.body_mask, "body")
    predictor_module.check_mirrored = timed(laterality.check_mirrored, "check")
    try:
        start = time.perf_counter()
        result = predictor.predict(image)
        predict_s = time.perf_counter() - start
    finally:
        predictor_module.body_mask, predictor_module.check_mirrored = original
    (checked, body), _ = seen["check"]
    indices = laterality.side_organ_indices(checked.classes)
    organ = checked.class_probabilities(columns=indices).sum(0).numpy() >= 0.5 if indices else None
    finding = laterality.mirror_finding(organ, body, checked.model_grid) if organ is not None else None
    warned = any(w.startswith("the image looks mirrored left-right") for w in result.warnings)
    return Row(name, mirrored, warned, finding.organ_ml if finding else None,
               finding.left_fraction if finding else None, predict_s, seen["seconds"])


def print_table(rows: list[Row]) -> None:
    print(f"{'case':58s} {'mirrored':>8s} {'warned':>6s} {'liver+spleen':>12s} {'left of midline':>15s} "
          f"{'predict':>8s} {'check':>7s} {'cost':>6s}")
    for row in rows:
        organ = f"{row.organ_ml:.0f} mL" if row.organ_ml is not None else "too little"
        left = f"{row.left_fraction:.0%}" if row.left_fraction is not None else "-"
        print(f"{row.case:58s} {'yes' if row.mirrored else 'no':>8s} {'yes' if row.warned else 'no':>6s} "
              f"{organ:>12s} {left:>15s} {row.predict_s:7.1f}s {row.check_s:6.2f}s {row.cost_percent:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, help="only the first N real CTs (default: all; s0009 comes first)")
    args = parser.parse_args(argv)
    from maskmed_core.bundled import DEFAULT_MODEL
    from maskmed_core.inference import Predictor
    from maskmed_core.inference.laterality import MIRRORED_LEFT_FRACTION
    from maskmed_core.io.reading import read_image

    print_machine("SimpleITK")
    predictor = Predictor.from_file(DEFAULT_MODEL, "cpu")
    rows = []
    for name, path in real_cts()[:args.cases]:
        image = read_image(path)
        for mirrored in (False, True):
            rows.append(measure(predictor, name, mirror(image) if mirrored else image, mirrored))
            print(f"  {name} {'mirrored' if mirrored else 'as given'}: {rows[-1].predict_s:.1f} s", flush=True)
    print(f"\nwarning when more than {MIRRORED_LEFT_FRACTION:.0%} of liver + spleen lies left of the body's midline; "
          "cost = check / (predict - check)")
    print_table(rows)
    false_alarms = [r.case for r in rows if r.warned and not r.mirrored]
    missed = [r.case for r in rows if r.mirrored and not r.warned and r.organ_ml is not None]
    worst = max(r.cost_percent for r in rows)
    print(f"\nfalse alarms: {len(false_alarms)} {false_alarms or ''}; mirrored CTs with liver and spleen in view not "
          f"warned about: {len(missed)} {missed or ''}; highest cost {worst:.1f} % (goal < {COST_GOAL_PERCENT:g} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
