"""End-to-end CT prediction, MaskMed `small` next to nnU-Net v2's own predictor: wall time, peak RSS, re-threshold.

In one run, on the real CT in ../shared/data (abdomen_ct_3mm.nii.gz) and on a synthetic 512 x 512 x 300 CT at
0.8 x 0.8 x 1.5 mm, each (tool, volume) in a fresh child process:

- wall time from the input file path to the written .nii.gz label file, model loading included (ours: what
  `maskmed predict` does, `Predictor.from_file` + `predict` + `label_map` + `write_labels`; nnU-Net:
  `nnUNetPredictor.initialize_from_trained_model_folder` + `predict_from_files_sequential`), and its ratio to
  nnU-Net's; torch (imported by both) is imported before the clock starts;
- peak RSS of the whole child process: VmHWM of /proc/self/status (the peak of the process's own memory map).
  `resource.getrusage(...).ru_maxrss` is not used: for a child started by fork + exec, Linux carries the parent's
  RSS at the fork into it, so it would report the parent's memory when that is larger;
- re-threshold latency: `result.label_map(q, c)` on our in-memory result for 5 threshold pairs after the warm call
  (the one that wrote the label file), median and max, with the time of its parts and the result's size in memory;
- "others": the cores other processes kept busy during each measurement (from /proc/stat). On a shared 2-core
  machine anything above ~0.2 inflates the times, MaskMed's more than nnU-Net's: rerun when it is idle.

Both use the same plans: target spacing 3 x 3 x 3 mm, patch 64 x 96 x 96 (z, y, x), overlap 0.5 (nnU-Net's
tile_step_size 0.5, Gaussian weighting), the same CT normalisation numbers, no mirroring (`--tta`: mirroring along
all three axes, 8 passes per patch, in both), 2 torch threads, everything in the one process (nnU-Net's sequential
path: no preprocessing or export workers). Both models have random weights until a trained MaskMed model exists:
a MaskMed `small` model file (15 AMOS classes) and an nnU-Net trained-model folder whose 3d_fullres configuration
is the default planner's PlainConvUNet for that spacing and patch (see benchmarks/nnunet_peer.py). With random
weights query confidences are low, so the re-threshold pairs are taken from the result's own confidence quantiles
(keeping all, 75 %, 50 %, 25 % and 10 % of the queries) rather than fixed values: the time depends on how many
queries are kept, not on what they segment.

Goals: at most 1.0x nnU-Net's time, under 4 GB (4e9 bytes) peak RSS, re-threshold under 0.3 s (max of the 5).

The peer needs nnU-Net v2 without its dependencies (they would replace the CPU torch by a CUDA build), then the
missing non-torch ones:

    pip install --no-deps nnunetv2 "acvl-utils>=0.2.6,<0.3" batchgenerators batchgeneratorsv2
    pip install threadpoolctl blosc2 pandas scikit-image nibabel connected-components-3d matplotlib seaborn \
        scikit-learn

    python3 -m benchmarks.inference                  # both volumes, both tools (about 4 min on 2 idle cores)
    python3 -m benchmarks.inference --skip-large --skip-nnunet
    python3 -m benchmarks.inference --tta --workdir /tmp/maskmed-bench   # keeps and reuses the inputs there
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

from benchmarks._common import (
    GIB,
    REAL_CT,
    SPACING_ZYX,
    cpu_seconds,
    measure,
    peak_rss_bytes,
    print_machine,
    run_child,
    run_in_workdir,
)

PATCH_ZYX = (64, 96, 96)
OVERLAP = 0.5
LARGE_SIZE_XYZ = (512, 512, 300)
LARGE_SPACING_XYZ = (0.8, 0.8, 1.5)
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # as NIfTI files from dcm2niix read in ITK
KEPT_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.1)
CLASS_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)
RSS_GOAL_BYTES = 4e9
RETHRESHOLD_GOAL_S = 0.3
TIME_GOAL_RATIO = 1.0


# ----- inputs ----------------------------------------------------------------------------------------------------
def make_maskmed_model(path: str, seed: int = 0) -> dict:
    """A MaskMed `small` model file with random weights for the 15 AMOS classes and the benchmark's plans."""
    import torch

    from maskmed_core.checkpoint import save_model_file
    from maskmed_core.classes import AMOS15_CLASSES
    from maskmed_core.model import MaskMed, preset
    from maskmed_core.plans import Plans

    config = preset("small", len(AMOS15_CLASSES), patch_size=PATCH_ZYX, spacing=SPACING_ZYX)
    stride = config.total_stride
    if any(p % s for p, s in zip(PATCH_ZYX, stride, strict=True)):
        raise ValueError(f"patch {PATCH_ZYX} is not divisible by the `small` preset's total stride {stride}")
    torch.manual_seed(seed)
    model = MaskMed(config).eval()
    save_model_file(
        path, model, Plans(spacing=SPACING_ZYX, patch_size=PATCH_ZYX, overlap=OVERLAP), list(AMOS15_CLASSES)
    )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "strides": config.encoder.strides,
        "total_stride": stride,
        "queries": config.head.num_queries,
    }


def synthesise_ct(path: str, size_xyz=LARGE_SIZE_XYZ, spacing_xyz=LARGE_SPACING_XYZ, seed: int = 0) -> None:
    """A CT-like int16 volume (HU): air outside an elliptic body cylinder with a fat rim, soft tissue with noise,
    lungs at the top, and brighter organs, aorta and spine; RAS-like direction as NIfTI CTs usually have."""
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    sx, sy, sz = spacing_xyz
    x = ((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)[None, None, :]  # mm from the centre
    y = ((np.arange(ny) - (ny - 1) / 2) * sy).astype(np.float32)[None, :, None]
    volume = np.empty((nz, ny, nx), dtype=np.int16)
    # (centre x, y, z mm), (semi-axes x, y, z mm), HU
    organs = [
        ((-70.0, -10.0, 60.0), (85.0, 70.0, 90.0), 60.0),  # liver (patient's right, image x < 0 here)
        ((85.0, 30.0, 70.0), (40.0, 35.0, 55.0), 50.0),  # spleen
        ((-65.0, 55.0, -20.0), (28.0, 25.0, 55.0), 160.0),  # right kidney, enhanced
        ((65.0, 55.0, -10.0), (28.0, 25.0, 55.0), 160.0),  # left kidney
        ((30.0, -30.0, 10.0), (60.0, 25.0, 30.0), 20.0),  # stomach / bowel
    ]
    chunk = 30
    for first in range(0, nz, chunk):
        z = ((np.arange(first, min(nz, first + chunk)) - (nz - 1) / 2) * sz).astype(np.float32)[:, None, None]
        taper = 1.0 - 0.1 * (z / (nz * sz / 2)) ** 2
        radius = np.sqrt((x / (0.42 * nx * sx * taper)) ** 2 + (y / (0.32 * ny * sy * taper)) ** 2)
        hu = np.where(radius <= 1.0, 40.0, -1000.0).astype(np.float32)
        hu = np.where((radius > 0.9) & (radius <= 1.0), -100.0, hu)  # subcutaneous fat
        lungs = (z > 130.0) & ((np.abs(x) - 75.0) ** 2 / 60.0**2 + (y + 10.0) ** 2 / 80.0**2 <= 1.0)
        hu = np.where(lungs, -850.0, hu)
        for (cx, cy, cz), (ax, ay, az), value in organs:
            inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0
            hu = np.where(inside, value, hu)
        hu = np.where((x**2 + (y - 20.0) ** 2 <= 12.0**2) & (radius <= 1.0), 200.0, hu)  # aorta
        hu = np.where((x**2 + (y - 75.0) ** 2 <= 22.0**2) & (radius <= 1.0), 550.0, hu)  # vertebral bodies
        hu += rng.normal(0.0, 15.0, size=hu.shape).astype(np.float32)
        volume[first : first + hu.shape[0]] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing_xyz)
    image.SetDirection(RAS_DIRECTION)
    image.SetOrigin((nx * sx / 2, ny * sy / 2, -nz * sz / 2))
    sitk.WriteImage(image, path, useCompression=True)


def make_nnunet_folder(folder: str, env_root: str, threads: int) -> dict:
    from benchmarks import nnunet_peer

    nnunet_peer.set_environment(env_root, threads)
    from maskmed_core.classes import AMOS15_CLASSES
    from maskmed_core.plans import Plans

    nnunet_peer.build_model_folder(folder, SPACING_ZYX, PATCH_ZYX, [c.name for c in AMOS15_CLASSES], Plans().intensity)
    arch = nnunet_peer.plan_architecture(SPACING_ZYX, PATCH_ZYX)["arch_kwargs"]
    return {"stages": arch["n_stages"], "features": arch["features_per_stage"]}


# ----- measurements ----------------------------------------------------------------------------------------------
def measure_maskmed(model_path: str, image_path: str, output_path: str, tta: bool, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    import numpy as np
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.inference import Predictor
    from maskmed_core.inference.postprocessing import keep_largest_components
    from maskmed_core.inference.result import _nearest_resample
    from maskmed_core.inference.writers import write_labels
    from maskmed_core.io.orientation import from_canonical

    predictor = Predictor.from_file(model_path, "cpu")
    loaded = time.perf_counter()
    events: list[tuple[str, float]] = []
    result = predictor.predict(
        image_path, progress=lambda fraction, stage: events.append((stage, time.perf_counter())), tta=tta
    )
    predicted = time.perf_counter()
    label_image = result.label_map()  # the warm call: builds the cached float copy of the masks
    first_label_map = time.perf_counter() - predicted
    write_labels(label_image, result.classes, output_path)
    end = time.perf_counter()
    cpu = cpu_seconds() - cpu_start
    peak = peak_rss_bytes()
    del label_image

    confidence = np.sort(result.query_confidence())
    queries = confidence.size
    pairs = []
    for fraction, class_threshold in zip(KEPT_FRACTIONS, CLASS_THRESHOLDS, strict=True):
        keep = max(1, round(fraction * queries))
        pairs.append((float(confidence[queries - keep]), class_threshold))  # confidence >= this keeps `keep`
    times, kept = [], []
    for query_threshold, class_threshold in pairs:
        kept.append(int((result.query_confidence() >= query_threshold).sum()))
        tick = time.perf_counter()
        result.label_map(query_threshold, class_threshold)
        times.append(time.perf_counter() - tick)

    # The parts of label_map, run the way label_map runs them (maskmed_core.inference.result).
    parts: dict[str, list[float]] = {
        "class_probabilities": [],
        "model_labels": [],
        "keep_largest_components (--largest-component)": [],
        "_nearest_resample": [],
        "to image + from_canonical": [],
    }
    for query_threshold, class_threshold in pairs:
        tick = time.perf_counter()
        result.class_probabilities(query_threshold)
        parts["class_probabilities"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        labels, _ = result.model_labels(query_threshold, class_threshold)
        parts["model_labels"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        keep_largest_components(labels)
        parts["keep_largest_components (--largest-component)"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        on_canonical = _nearest_resample(labels, result.model_grid, result.canonical_grid)
        parts["_nearest_resample"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        image = sitk.GetImageFromArray(on_canonical)
        result.canonical_grid.apply(image)
        from_canonical(image, result.input_grid.empty_image())
        parts["to image + from_canonical"].append(time.perf_counter() - tick)

    float_copy = result._float_masks
    return {
        "load": loaded - start,
        "wall": end - start,
        "cpu": cpu,
        "peak": peak,
        "stages": _stage_times(events, loaded, predicted, first_label_map, end),
        "rethreshold": times,
        "pairs": pairs,
        "kept": kept,
        "queries": queries,
        "parts": {name: statistics.median(values) for name, values in parts.items()},
        "cpu_total": cpu_seconds(),
        "masks_bytes": result.masks.nbytes,
        "float_bytes": 0 if float_copy is None else float_copy.numel() * float_copy.element_size(),
        "model_grid": result.model_grid.size,
        "input_grid": result.input_grid.size,
    }


def _stage_times(events, loaded, predicted, first_label_map, end) -> dict[str, float]:
    """Seconds per step of our prediction, from its progress callbacks (the first "inference" one comes after the
    first patch, so preparing is reported together with it)."""
    first: dict[str, float] = {}
    for stage, tick in events:
        first.setdefault(stage, tick)
    patches = [tick for stage, tick in events if stage == "inference"] or [first["preparing"]]
    gaps = [later - earlier for earlier, later in zip(patches[:-1], patches[1:], strict=True)]
    each = f"median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s each" if gaps else "none"
    return {
        "read + checks": first["preparing"] - first.get("reading", loaded),
        "prepare + first patch": patches[0] - first["preparing"],
        f"{len(gaps)} more patches ({each})": patches[-1] - patches[0],
        "normalise stitched": first.get("finishing", predicted) - patches[-1],
        "uint8 result": predicted - first.get("finishing", predicted),
        "first label_map": first_label_map,
        "write .nii.gz": end - predicted - first_label_map,
    }


def measure_nnunet(folder: str, image_path: str, output_path: str, tta: bool, threads: int, env_root: str) -> dict:
    from benchmarks import nnunet_peer

    nnunet_peer.set_environment(env_root, threads)
    import torch

    torch.set_num_threads(threads)
    log_path = Path(output_path).with_suffix("").with_suffix(".log")
    with open(log_path, "w") as log, contextlib.redirect_stdout(log):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        predictor = nnunet_peer.make_predictor(folder, tta)
        loaded = time.perf_counter()
        nnunet_peer.predict_file(predictor, image_path, output_path)
        end, cpu = time.perf_counter(), cpu_seconds() - cpu_start
    return {
        "load": loaded - start,
        "wall": end - start,
        "cpu": cpu,
        "peak": peak_rss_bytes(),
        "params": nnunet_peer.network_parameters(predictor),
        "cpu_total": cpu_seconds(),
    }


# ----- report ----------------------------------------------------------------------------------------------------
def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tta", action="store_true", help="mirroring along all three axes in both tools")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 512 x 512 x 300 volume")
    parser.add_argument("--skip-nnunet", action="store_true", help="run only MaskMed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both tools")
    parser.add_argument("--real-ct", default=REAL_CT, help="the real CT (default: ../shared/data/ct/...)")
    parser.add_argument(
        "--workdir",
        help="keep inputs and outputs here and reuse inputs found there (default: a "
        "temporary folder, removed at the end)",
    )
    args = parser.parse_args()

    print_machine("nnunetv2")
    run_in_workdir(args.workdir, "maskmed-inference-bench-", lambda workdir: _run(args, workdir))


def _run(args: argparse.Namespace, workdir: Path) -> None:
    """Prepare the inputs, measure, print the table."""
    model_path = workdir / "small_random.maskmed"
    info = run_child(make_maskmed_model, str(model_path))
    nnunet_folder, env_root = workdir / "nnunet_3d_fullres_random", workdir / "nnunet_env"
    nnunet_info = None
    if not args.skip_nnunet:
        nnunet_info = run_child(make_nnunet_folder, str(nnunet_folder), str(env_root), args.threads)
    volumes = [("real CT", Path(args.real_ct))]
    if not args.skip_large:
        large = workdir / "synthetic_512x512x300.nii.gz"
        if not large.is_file():
            tick = time.perf_counter()
            run_child(synthesise_ct, str(large))
            print(f"(synthesised {large.name} in {time.perf_counter() - tick:.0f} s)")
        volumes.append(("512x512x300", large))

    print(
        f"settings: target spacing {SPACING_ZYX} mm, patch {PATCH_ZYX} (z, y, x), overlap {OVERLAP}, "
        f"TTA {'on (mirroring x, y, z: 8 passes)' if args.tta else 'off'}, {args.threads} torch threads, CPU, "
        "random weights, one process per measurement"
    )
    print(
        f"  MaskMed small: {info['params'] / 1e6:.2f} M parameters, {info['queries']} queries, strides "
        f"{info['strides']} (total {info['total_stride']})"
    )
    if nnunet_info is not None:
        print(
            f"  nnU-Net 3d_fullres (PlainConvUNet, default planner rules): {nnunet_info['stages']} stages, features "
            f"{nnunet_info['features']}; predict_from_files_sequential (no worker processes)"
        )

    rows = []
    started = time.perf_counter()
    for name, path in volumes:
        outputs = workdir / "outputs"
        outputs.mkdir(exist_ok=True)
        slug = "".join(ch if ch.isalnum() else "_" for ch in name)
        peer = None
        if not args.skip_nnunet:
            peer = measure(
                measure_nnunet,
                str(nnunet_folder),
                str(path),
                str(outputs / f"{slug}_nnunet.nii.gz"),
                args.tta,
                args.threads,
                str(env_root),
            )
        ours = measure(
            measure_maskmed, str(model_path), str(path), str(outputs / f"{slug}_maskmed.nii.gz"), args.tta, args.threads
        )
        rows.append((name, ours, peer))
        print(
            f"  {name}: input {' x '.join(map(str, ours['input_grid']))} voxels, model grid "
            f"{' x '.join(map(str, ours['model_grid']))} (x, y, z)"
        )

    print(
        f"measured in {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) now: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} (above {args.threads} means other processes shared the CPU)"
    )
    print()
    header = (
        f"{'volume':12s} {'tool':18s} {'load s':>7s} {'wall s':>8s} {'CPU s':>8s} {'others':>7s} "
        f"{'peak RSS GiB':>13s} {'time / nnU-Net':>15s} {'re-threshold median/max s':>26s}"
    )
    print(header)
    print("-" * len(header))
    for name, ours, peer in rows:
        if peer is not None:
            print(
                f"{name:12s} {'nnU-Net 3d_fullres':18s} {peer['load']:7.2f} {peer['wall']:8.2f} {peer['cpu']:8.1f} "
                f"{peer['others']:7.2f} {peer['peak'] / GIB:13.2f} {1.0:15.2f} {'-':>26s}"
            )
        ratio = f"{ours['wall'] / peer['wall']:15.2f}" if peer is not None else f"{'-':>15s}"
        rethreshold = f"{statistics.median(ours['rethreshold']):.3f} / {max(ours['rethreshold']):.3f}"
        print(
            f"{name:12s} {'MaskMed small':18s} {ours['load']:7.2f} {ours['wall']:8.2f} {ours['cpu']:8.1f} "
            f"{ours['others']:7.2f} {ours['peak'] / GIB:13.2f} {ratio} {rethreshold:>26s}"
        )
    print(
        "(load s: imports and model loading, included in wall s; CPU s: user + system time of all threads; others: "
        "cores kept busy by other processes meanwhile, on average)"
    )
    contended = [
        f"{name} {tool}"
        for name, ours, peer in rows
        for tool, r in (("MaskMed", ours), ("nnU-Net", peer))
        if r is not None and r["others"] > 0.2
    ]
    if contended:
        print(f"warning: other processes shared the CPU during {', '.join(contended)}: those times are inflated")

    print()
    print(
        f"goals (MaskMed small): time <= {TIME_GOAL_RATIO:.1f}x nnU-Net, peak RSS < 4 GB "
        f"({RSS_GOAL_BYTES / GIB:.2f} GiB), re-threshold < {RETHRESHOLD_GOAL_S} s (max of 5)"
    )
    for name, ours, peer in rows:
        time_goal = "not measured (--skip-nnunet)"
        if peer is not None:
            ratio = ours["wall"] / peer["wall"]
            time_goal = f"{_mark(ratio <= TIME_GOAL_RATIO)} ({ratio:.2f}x wall, {ours['cpu'] / peer['cpu']:.2f}x CPU)"
        worst = max(ours["rethreshold"])
        print(
            f"  {name:12s} time {time_goal}; RSS {_mark(ours['peak'] < RSS_GOAL_BYTES)} "
            f"({ours['peak'] / 1e9:.2f} GB); re-threshold {_mark(worst < RETHRESHOLD_GOAL_S)} ({worst:.3f} s)"
        )

    print()
    print("MaskMed details (seconds):")
    for name, ours, _ in rows:
        stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in ours["stages"].items())
        print(f"  {name}: load {ours['load']:.2f}, {stages}")
        pairs = ", ".join(
            f"({q:.3f}, {c:.1f}) {k}/{ours['queries']} kept {t:.3f}"
            for (q, c), k, t in zip(ours["pairs"], ours["kept"], ours["rethreshold"], strict=True)
        )
        print(f"    re-threshold (query, class threshold): {pairs}")
        parts = ", ".join(f"{part} {seconds:.3f}" for part, seconds in ours["parts"].items())
        print(f"    label_map parts (median; model_labels includes class_probabilities): {parts}")
        print(
            f"    result in memory: masks {ours['masks_bytes'] / 2**20:.0f} MiB (uint8) + cached float copy "
            f"{ours['float_bytes'] / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
