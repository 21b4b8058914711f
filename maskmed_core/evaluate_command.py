"""``maskmed evaluate``: segment a labelled CT with a model file and score it against its labels.

Prints per-class Dice and HD95 (mm) on the CT's own grid for the model's classes, and their means over the classes
present in the reference (a class the model misses counts Dice 0). The reference label map is matched to the CT by
physical position; ``--label-mapping`` maps its values to the model's class label values (e.g. TotalSegmentator v2
ids to the 15 AMOS classes with ../shared/data/amos15_from_totalseg_v2.json). Exit codes: 0 ok, 1 error, 2 usage,
3 bad input, 4 bad model file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from maskmed_core.predict_command import add_largest_component_option

    parser.add_argument("model", help="model file (.maskmed), or 'default' for the bundled model")
    parser.add_argument("image", help="CT volume file or DICOM series folder")
    parser.add_argument("labels", help="its reference label map")
    parser.add_argument("--label-mapping", help="JSON file mapping the reference's label values to the model's")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--query-threshold", type=float, default=None, help="default: the model's default")
    parser.add_argument("--class-threshold", type=float, default=None, help="default: the model's default")
    add_largest_component_option(parser)
    parser.add_argument("--tta", action="store_true",
                        help="average over mirrored inputs, as `maskmed predict --tta` (up to 8 passes, along the "
                        "axes the model was trained mirrored along: slower)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.checkpoint import ModelFileError
    from maskmed_core.evaluation import check_reference, class_scores, format_scores, summarize
    from maskmed_core.inference import Predictor
    from maskmed_core.io import InputError, read_image
    from maskmed_core.predict_command import DEFAULT_MODEL
    from maskmed_core.train_command import read_label_mapping
    from maskmed_core.training.dataset import read_label

    model_path = DEFAULT_MODEL if args.model == "default" else Path(args.model)
    start = time.perf_counter()
    try:
        predictor = Predictor.from_file(model_path, args.device)
    except (ModelFileError, FileNotFoundError) as error:
        print(f"maskmed: error: {error}", file=sys.stderr)
        return 4
    try:
        mapping = read_label_mapping(args.label_mapping) if args.label_mapping else None
        image = read_image(args.image)
        reference_image = read_label(args.labels, mapping)
        warnings = check_reference(image, reference_image, [c.label for c in predictor.classes], mapping is not None)
    except (InputError, OSError, ValueError, KeyError) as error:
        print(f"maskmed: error: {error}", file=sys.stderr)
        return 3
    reference_image = sitk.Resample(reference_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                    reference_image.GetPixelID())
    result = predictor.predict(image, tta=args.tta)
    warnings += result.warnings
    for warning in warnings:
        print(f"maskmed: warning: {warning}", file=sys.stderr)
    thresholds = {}
    if args.query_threshold is not None:
        thresholds["query_threshold"] = args.query_threshold
    if args.class_threshold is not None:
        thresholds["class_threshold"] = args.class_threshold
    prediction = sitk.GetArrayFromImage(result.label_map(**thresholds, largest_component=args.largest_component))
    reference = sitk.GetArrayFromImage(reference_image)
    spacing_zyx = tuple(float(s) for s in image.GetSpacing()[::-1])
    classes = {c.name: c.label for c in result.classes}
    scores = class_scores(prediction, reference, classes, spacing_zyx)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"model": str(model_path), "image": str(args.image), "labels": str(args.labels),
                          "classes": scores, **summarize(scores), "tta": args.tta,
                          "largest_component": args.largest_component, "seconds": seconds,
                          "device": str(predictor.device), "warnings": warnings}))
        return 0
    print(f"{Path(args.image).name}: {int(np.prod(prediction.shape))} voxels, spacing "
          f"{' x '.join(f'{s:g}' for s in spacing_zyx)} mm (z, y, x); model {model_path.name}"
          f"{'; mirrored test-time augmentation' if args.tta else ''}"
          f"{'; largest component per class' if args.largest_component else ''}")
    print("\n".join(format_scores(scores, list(classes))))
    print(f"time: {seconds:.1f} s on {predictor.device}")
    return 0
