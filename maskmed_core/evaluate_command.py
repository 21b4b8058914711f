"""``maskmed evaluate``: segment a labelled CT with a model file and score it against its labels.

Prints per-class Dice and HD95 (mm) on the CT's own grid for the model's classes, and their means over the classes
present in the reference (a class the model misses counts Dice 0). The reference label map is matched to the CT by
physical position; ``--label-mapping`` maps its values to the model's class label values (e.g. TotalSegmentator v2
ids to the 15 AMOS classes with ../shared/data/amos15_from_totalseg_v2.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from maskmed_core import bundled
from maskmed_core.command_options import add_device_option, add_largest_component_option
from maskmed_core.exit_codes import ExitCode, exit_codes_help, print_error, run_reporting

EXIT_CODES_HELP = exit_codes_help(ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.BAD_MODEL,
                                  ExitCode.CANCELLED)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from maskmed_core.model.semantic import DEFAULT_CLASS_THRESHOLD, DEFAULT_QUERY_THRESHOLD

    parser.add_argument("model", help="model file (.maskmed), or 'default' for the bundled model")
    parser.add_argument("image", help="CT volume file or DICOM series folder")
    parser.add_argument("labels", help="its reference label map")
    parser.add_argument("--label-mapping", help="JSON file mapping the reference's label values to the model's")
    add_device_option(parser)
    parser.add_argument("--query-threshold", type=float, default=DEFAULT_QUERY_THRESHOLD,
                        help=f"as `maskmed predict --query-threshold` (default: {DEFAULT_QUERY_THRESHOLD})")
    parser.add_argument("--class-threshold", type=float, default=DEFAULT_CLASS_THRESHOLD,
                        help=f"as `maskmed predict --class-threshold` (default: {DEFAULT_CLASS_THRESHOLD})")
    add_largest_component_option(parser)
    parser.add_argument("--tta", action="store_true",
                        help="average over mirrored inputs, as `maskmed predict --tta` (up to 8 passes, along the "
                        "axes the model was trained mirrored along: slower)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    return run_reporting(lambda: _run(args), print_error, "interrupted; nothing was written")


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.evaluation import check_reference, class_scores, format_scores, summarize
    from maskmed_core.inference import Predictor
    from maskmed_core.io import read_image
    from maskmed_core.label_mapping import read_label_mapping
    from maskmed_core.training.dataset import read_label

    model_path = bundled.DEFAULT_MODEL if args.model == "default" else Path(args.model)
    start = time.perf_counter()
    predictor = Predictor.from_file(model_path, args.device)
    mapping = read_label_mapping(args.label_mapping) if args.label_mapping else None
    image = read_image(args.image)
    reference_image = read_label(args.labels, mapping)
    warnings = check_reference(image, reference_image, [c.label for c in predictor.classes], mapping is not None)
    reference_image = sitk.Resample(reference_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                    reference_image.GetPixelID())
    result = predictor.predict(image, tta=args.tta)
    warnings += result.warnings
    for warning in warnings:
        print(f"maskmed: warning: {warning}", file=sys.stderr)
    prediction = sitk.GetArrayFromImage(result.label_map(args.query_threshold, args.class_threshold,
                                                         largest_component=args.largest_component))
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
        return ExitCode.OK
    print(f"{Path(args.image).name}: {int(np.prod(prediction.shape))} voxels, spacing "
          f"{' x '.join(f'{s:g}' for s in spacing_zyx)} mm (z, y, x); model {model_path.name}"
          f"{'; mirrored test-time augmentation' if args.tta else ''}"
          f"{'; largest component per class' if args.largest_component else ''}")
    print("\n".join(format_scores(scores, list(classes))))
    print(f"time: {seconds:.1f} s on {predictor.device}")
    return ExitCode.OK
