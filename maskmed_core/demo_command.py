"""``maskmed demo``: segment a bundled real CT with the default model and show what came out.

Two bundled CTs (``--case``): ``s0009`` (default), a lumbar-spine/abdomen CT of the TotalSegmentator dataset that
the default model never saw in training, with the dataset's labels (made with TotalSegmentator, corrected by hand);
and ``abdomen``, a native abdomen-pelvis CT the default model was trained on, with TotalSegmentator's predictions.
Writes ``<out>/demo_ct.nii.gz``, ``<out>/demo_ct.seg.nrrd`` (opens in 3D Slicer) and ``<out>/demo_ct.png``
(axial, coronal and sagittal views with the segments overlaid), and prints the per-class Dice against the
bundled reference labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from maskmed_core import bundled
from maskmed_core.atomic import atomic_path, output_batch
from maskmed_core.command_options import add_device_option
from maskmed_core.exit_codes import ExitCode, exit_codes_help, print_error, run_reporting

RESOURCES = bundled.RESOURCES
DEMO_CT = RESOURCES / "demo" / "abdomen_ct_3mm.nii.gz"
DEMO_LABELS = RESOURCES / "demo" / "abdomen_ct_3mm_totalseg.nii.gz"
DEMO_MAPPING = RESOURCES / "demo" / "amos15_from_totalseg_v2.json"
HELD_OUT_CT = RESOURCES / "demo" / "s0009_ct.nii.gz"
HELD_OUT_LABELS = RESOURCES / "demo" / "s0009_totalseg.nii.gz"
# case -> (CT, labels, what the Dice means, whether the default model was trained on it)
CASES = {
    "s0009": (HELD_OUT_CT, HELD_OUT_LABELS,
              "agreement with the TotalSegmentator dataset's labels (made with TotalSegmentator, corrected by hand)",
              False),
    "abdomen": (DEMO_CT, DEMO_LABELS, "agreement with TotalSegmentator (the reference labels are its predictions)",
                True),
}


EXIT_CODES_HELP = exit_codes_help(ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.BAD_MODEL, ExitCode.CANCELLED)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="maskmed_demo", help="output folder (default ./maskmed_demo)")
    parser.add_argument("--model", help="model file (default: the bundled default model)")
    add_device_option(parser)
    parser.add_argument("--case", default="s0009", choices=tuple(CASES),
                        help="s0009: a CT the default model never saw (default); abdomen: one it was trained on")
    parser.add_argument("--crop", type=int, nargs=6, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"),
                        help="segment only this voxel box of the demo CT (a quick check)")


def held_out_note(case: str, default_model: bool) -> str:
    """What the printed Dice is worth: measured on a CT the model never saw, or on one of its training cases."""
    if not default_model:
        return "  (a model file of your own: whether it saw this CT in training, only you know)"
    if CASES[case][3]:
        return "  (this CT is one of the cases the default model was trained on: seen data, not a test set)"
    return "  (this CT was held out: the default model never saw it, nor its labels, in training)"


def reference_labels(image_shape_source, classes, labels_file: Path = DEMO_LABELS) -> np.ndarray:
    """The bundled TotalSegmentator labels mapped to the model's class label values, (z, y, x)."""
    import SimpleITK as sitk  # noqa: N813

    mapping = {c["totalseg_v2_id"]: c["amos_id"] for c in json.loads(DEMO_MAPPING.read_text())["classes"]}
    labels = sitk.Resample(sitk.ReadImage(str(labels_file)), image_shape_source, sitk.Transform(),
                           sitk.sitkNearestNeighbor, 0)
    source = sitk.GetArrayFromImage(labels)
    mapped = np.zeros(source.shape, dtype=np.uint16)
    valid = {c.label for c in classes}
    for totalseg_id, amos_id in mapping.items():
        if amos_id in valid:
            mapped[source == totalseg_id] = amos_id
    return mapped


def dice_table(prediction: np.ndarray, reference: np.ndarray, classes) -> list[tuple[str, float | None]]:
    """Dice per class; None where the class is in neither."""
    rows = []
    for segment_class in classes:
        p, r = prediction == segment_class.label, reference == segment_class.label
        total = int(p.sum()) + int(r.sum())
        rows.append((segment_class.name, 2.0 * int((p & r).sum()) / total if total else None))
    return rows


def overlay_png(image, labels, classes, path: Path) -> Path:
    """Axial, coronal and sagittal slices through the segmented region's centre with coloured segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.io.orientation import to_canonical

    canonical = to_canonical(image)
    ct = sitk.GetArrayFromImage(canonical).astype(np.float32)  # (z, y, x): S, P, L increasing
    lab_image = sitk.GetImageFromArray(labels)
    lab_image.CopyInformation(image)
    lab = sitk.GetArrayFromImage(to_canonical(lab_image))
    spacing = canonical.GetSpacing()  # (x, y, z) mm
    foreground = np.argwhere(lab > 0)
    z, y, x = (foreground.mean(0).astype(int) if len(foreground) else np.array(lab.shape) // 2)
    palette = np.zeros((int(lab.max(initial=0)) + 1, 4))
    for c in classes:
        if c.label < len(palette):
            palette[c.label] = [*(v / 255 for v in c.color), 0.55]
    views = [
        ("axial", ct[z], lab[z], spacing[1] / spacing[0]),
        ("coronal", ct[:, y, :], lab[:, y, :], spacing[2] / spacing[0]),
        ("sagittal", ct[:, :, x], lab[:, :, x], spacing[2] / spacing[1]),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    for axis, (title, picture, segments, aspect) in zip(axes, views, strict=True):
        # Radiological display: patient superior up, patient right on the left of the screen.
        flip_rows = title != "axial"
        shown_ct = picture[::-1] if flip_rows else picture
        shown_seg = segments[::-1] if flip_rows else segments
        axis.imshow(np.clip(shown_ct, -160, 240), cmap="gray", aspect=aspect, interpolation="nearest")
        axis.imshow(palette[shown_seg], aspect=aspect, interpolation="nearest")
        axis.set_title(title)
        axis.axis("off")
    present = [c for c in classes if (lab == c.label).any()]
    handles = [plt.Rectangle((0, 0), 1, 1, color=[v / 255 for v in c.color]) for c in present]
    if handles:
        figure.legend(handles, [c.name for c in present], loc="lower center", ncol=min(5, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=90, bbox_inches="tight", format="png")
    finally:
        plt.close(figure)
    return path


def run(args: argparse.Namespace) -> int:
    return run_reporting(lambda: _run(args), print_error, "interrupted")


def _run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.inference import Predictor
    from maskmed_core.inference.writers import write_labels

    model_path = Path(args.model) if args.model else bundled.DEFAULT_MODEL
    if not model_path.is_file():
        print(f"maskmed: error: no model at {model_path}: the default model is built by the recipe in the README "
              "(`maskmed train recipes/default_model/dataset.json ... --export ...`), or pass --model FILE",
              file=sys.stderr)
        return ExitCode.BAD_MODEL
    start = time.perf_counter()
    predictor = Predictor.from_file(model_path, args.device)
    ct_file, labels_file, agreement, _ = CASES[args.case]
    image = sitk.ReadImage(str(ct_file))
    if args.crop:
        x0, x1, y0, y1, z0, z1 = args.crop
        size = image.GetSize()
        if not all(0 <= low < high <= n for low, high, n in zip((x0, y0, z0), (x1, y1, z1), size, strict=True)):
            print(f"maskmed: error: --crop {x0} {x1} {y0} {y1} {z0} {z1} is not a box inside the demo CT "
                  f"({size[0]} x {size[1]} x {size[2]} voxels): give X0 X1 Y0 Y1 Z0 Z1 with 0 <= start < end <= size",
                  file=sys.stderr)
            return ExitCode.USAGE
        image = image[x0:x1, y0:y1, z0:z1]

    def progress(fraction: float, stage: str) -> None:
        sys.stderr.write(f"\rdemo: {stage:10s} {fraction * 100:5.1f}%")
        sys.stderr.flush()

    result = predictor.predict(image, progress=progress)
    sys.stderr.write("\n")
    label_image = result.label_map()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    labels = sitk.GetArrayFromImage(label_image)
    with output_batch():  # the three files replace an earlier demo's together, or none of them does
        files = [
            write_labels(label_image, result.classes, output / "demo_ct.nii.gz"),
            write_labels(label_image, result.classes, output / "demo_ct.seg.nrrd"),
            overlay_png(image, labels, result.classes, output / "demo_ct.png"),
        ]
    seconds = time.perf_counter() - start
    reference = reference_labels(image, result.classes, labels_file)
    rows = dice_table(labels, reference, result.classes)
    print(f"Per-class Dice on {ct_file.name}: {agreement}")
    scored = [score for _, score in rows if score is not None]
    for name, score in rows:
        print(f"  {name:22s} {'   -' if score is None else f'{score:.3f}'}")
    if scored:
        print(f"  {'mean (classes present)':22s} {np.mean(scored):.3f}")
    print(held_out_note(args.case, model_path == bundled.DEFAULT_MODEL))
    print(f"time: {seconds:.1f} s (model loading, inference and writing) on {predictor.device}")
    print("files: " + ", ".join(str(f) for f in files))
    return ExitCode.OK
