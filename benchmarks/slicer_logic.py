"""The Slicer module's Logic on real MRML (slicer-core): Segment click to segments, and the slider update.

For the real CT in ../shared/data (abdomen_ct_3mm.nii.gz, 122 x 101 x 112 at 3 mm) and a synthetic CT of
512 x 512 x 300 voxels at 0.8 x 0.8 x 1.5 mm (benchmarks/inference.py's phantom), each loaded into a
vtkMRMLScalarVolumeNode with Slicer's own storage node:

- Segment: ``MaskMedLogic.startSegmentation`` -> ``poll()`` every 20 ms -> segments in a new segmentation node.
  "total" is all of it; "startup" is child start to its first progress event: interpreter start, torch import
  and model load (``maskmed predict`` loads the model before it reads the input), measured by the Logic
  itself (``timings["childStartup"]``); "excl. load" = total - startup. Also: volume export, the child's wall
  time, and "import" = loading the result + writing the segments.
- Slider: ``MaskMedLogic.setThresholds(q, c)`` for 6 threshold pairs (each differs from the previous one), median
  and max, with the number of segments rewritten. The model has random weights, so its query confidences are
  low: the query thresholds are the result's own confidence quantiles (keeping 100, 75, 50, 25, 10 % of the
  queries) rather than fixed values; the time depends on how many queries are kept, not on what they segment.
  One warm call (the float copy of the masks is built on first use) runs before the clock. "+table max" adds
  ``ThresholdSession.classTable`` at the new thresholds (the panel refreshes its table after each move).

Model: MaskMed `small` (15 AMOS classes, 32 queries) with random weights, plans 3 x 3 x 3 mm and patch
64 x 96 x 96, as in benchmarks/inference.py. Goal: slider update under 0.5 s on 2 cores (max of the pairs).
The load average is printed: on a shared machine other processes inflate every figure.

    python3 -m benchmarks.slicer_logic                 # both volumes (a few minutes on 2 cores)
    python3 -m benchmarks.slicer_logic --skip-large
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import inference as bench
from benchmarks._common import REAL_CT

SLIDER_GOAL_S = 0.5
KEPT_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.1, 0.5)
CLASS_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1, 0.5)


def measure(volume_path: Path, model_path: Path, label: str) -> dict:
    import numpy as np
    import slicer

    from MaskMedSegmentation import MaskMedSegmentationLib as Logic  # the module folder as a namespace package

    scene = slicer.vtkMRMLScene()
    volume = Logic.readVolumeFile(volume_path, scene, name=label)
    logic = Logic.MaskMedLogic(scene)
    finished: list = []
    logic.startSegmentation(volume, str(model_path), "cpu", onFinished=lambda ok, text: finished.append((ok, text)))
    while logic.poll():
        time.sleep(0.02)
    ok, text = finished[0]
    if not ok:
        raise RuntimeError(f"{label}: {text}")
    timings = dict(logic.timings)
    session = logic.thresholdSession
    confidence = np.sort(np.asarray(session.result.query_confidence()))[::-1]
    pairs = []
    for kept, class_threshold in zip(KEPT_FRACTIONS, CLASS_THRESHOLDS, strict=True):
        count = max(1, int(round(kept * confidence.size)))
        pairs.append((float(confidence[count - 1]) - 1e-6, class_threshold))
    logic.setThresholds(0.25, 0.45)  # warm: builds the cached float masks
    seconds, tables, changed = [], [], []
    for q, c in pairs:
        start = time.perf_counter()
        changed.append(len(logic.setThresholds(q, c)))
        middle = time.perf_counter()
        session.classTable(q, c)  # what the panel shows after each move
        seconds.append(middle - start)
        tables.append(time.perf_counter() - middle)
    dims = volume.GetImageData().GetDimensions()
    return {
        "label": label, "size": "x".join(str(d) for d in dims), "timings": timings,
        "slider_median": statistics.median(seconds), "slider_max": max(seconds), "slider_changed": changed,
        "table_max": max(tables), "both_max": max(a + b for a, b in zip(seconds, tables, strict=True)),
        "queries": int(confidence.size), "masks_mb": session.result.masks.nbytes / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-large", action="store_true", help="only the real CT")
    parser.add_argument("--workdir", help="keep the model and the synthetic CT here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="maskmed-slicer-bench-") as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        model = work / "small_random.maskmed"
        if not model.is_file():
            bench.make_maskmed_model(str(model))
        cases = [(REAL_CT, "real CT 3 mm")]
        if not args.skip_large:
            large = work / "synthetic_512x512x300.nii.gz"
            if not large.is_file():
                bench.synthesise_ct(str(large))
            cases.append((large, "synthetic 0.8x0.8x1.5"))
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; cores: {os.cpu_count()}")
        rows = [measure(path, model, label) for path, label in cases]
        print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    header = (f"{'volume':24s} {'voxels':13s} {'total s':>8s} {'startup':>8s} {'excl.load':>9s} {'export':>7s} "
              f"{'child':>7s} {'import':>7s} {'slider med':>10s} {'slider max':>10s} {'+table max':>10s}  "
              f"goal<{SLIDER_GOAL_S}s  changed")
    print(header)
    print("-" * len(header))
    for row in rows:
        t = row["timings"]
        startup = t.get("childStartup", float("nan"))
        print(f"{row['label']:24s} {row['size']:13s} {t['total']:8.2f} {startup:8.2f} {t['total'] - startup:9.2f} "
              f"{t['export']:7.2f} {t['child']:7.2f} {t['import']:7.2f} {row['slider_median']:10.3f} "
              f"{row['slider_max']:10.3f} {row['both_max']:10.3f}  "
              f"{'ok' if row['slider_max'] < SLIDER_GOAL_S else 'MISSED':8s} "
              f"{row['slider_changed']}")
    print(f"(model: MaskMed small, 15 classes, {rows[0]['queries']} queries, random weights; slider = "
          "MaskMedLogic.setThresholds over 6 threshold pairs, +table = with ThresholdSession.classTable after it; "
          "startup = interpreter + torch import + model load)")


if __name__ == "__main__":
    main()
