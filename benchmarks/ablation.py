"""Ablation of MaskMed's head: the paper's claim (decoupled mask/class head + FSA transformer) measured on our data.

Three variants, trained with `maskmed train`'s own loop (:func:`maskmed_core.training.trainer.run_training`) on the
SAME encoder, data, patches, augmentation, optimizer, number of steps and seed, differing only in what is ablated:

- ``maskmed``: the decoupled head (object queries, each with a mask and a class) after the FSA transformer
  (``TrainConfig(head="decoupled", transformer=True)``);
- ``conv``: the point-wise 1x1x1 conv head, nnU-Net style (``head="conv", transformer=True``). The FSA transformer
  is KEPT: in :class:`maskmed_core.model.maskmed.MaskMed` it sits between the encoder and the pixel decoder and
  refines the encoder features whatever the head is (``config.transformer.enabled`` and ``config.head.kind`` are
  independent), so keeping it changes only the head: (a) vs (b) isolates the decoupled head, (a) vs (c) the FSA
  transformer. What comes with the conv head by construction: its pixel decoder runs up to full resolution (one
  1x1x1 conv per decoder stage, deep supervision with Dice + CE), where the decoupled head stops at the mask
  level (half resolution in `small`) and uses the Hungarian-matched set criterion;
- ``no_fsa``: the decoupled head without the FSA transformer (``head="decoupled", transformer=False``).

With the same seed every variant draws the same patches with the same augmentation (the sampler and augmenter have
their own seeded streams) and starts from the same encoder weights (the encoder is built first after seeding).

Protocol: leave one case out over the labelled cases of ``--dataset`` (default recipes/default_model/dataset.json:
the two real CTs of ../shared/data with their TotalSegmentator labels, mapped by
../shared/data/amos15_from_totalseg_v2.json to the 15 AMOS classes). For each fold (held-out case) and variant:
train on the other case(s) only (a temporary JSON case list with absolute paths), ``epochs=1`` of ``--steps``
steps so that run_training's validation (on the training cases) runs once, at the end; warm-up
``min(50, steps // 5)`` steps, then poly decay. Then evaluate the last model on the held-out case ON THE MODEL GRID:
the case is preprocessed with the model's own plans by ``preprocess_cases`` (the training cache: same resampling
and normalisation as training), predicted by ``predict_case_indices`` (full sliding window, default thresholds, as
run_training's validation) and compared with its label map resampled (nearest neighbour) to that grid. Metrics per
class:

- Dice and HD95 (mm) by ``maskmed_core.evaluation.class_scores``, as ``maskmed evaluate`` scores (HD95: MONAI's
  ``compute_hausdorff_distance(..., percentile=95, spacing=plans.spacing)``, symmetric, on the surface voxels);
- a class absent from both reference and prediction is skipped; a class in the reference but not predicted is
  "missed" (Dice 0, HD95 missing "—", counted); a class predicted but not in the reference is a "false-positive
  class" (counted and named, not a table row). HD95 is never set to 0 or to a made-up penalty: the mean HD95 is over
  the classes where it exists, with their number beside it.

``predict_case_indices`` labels a voxel only where its best class reaches the 0.5 class threshold (MaskMed's rule,
the same for every variant: the main numbers). For the conv head's softmax that is stricter than nnU-Net's argmax
(a class can win with less than 0.5), which matters for an under-trained model, so conv runs also report the mean
Dice and HD95 of the argmax over background and classes of the same stitched softmax (a line under each fold and
in the verdict; ``argmax_scores`` in the JSON).

Table rows are the classes of the held-out reference; the mean row averages Dice over them (a missed class counts
0). The average over folds averages each class over the folds whose reference has it, and the mean row is the
mean of the per-fold means. Caveat: with two cases each fold trains on ONE case (the chest_abdomen_dicom fold trains
on the full abdomen; the abdomen_ct_3mm fold trains on a 20-slice (13 at 3 mm) upper-abdomen slab that lacks the
kidneys, the bladder and more, which the model can then only miss), so differences are indicative, not significant.

Each (fold, variant) run is a separate process (this script with ``--worker JOB.json``), so its memory is returned
and ``--jobs K`` runs K at once (each with cores // K torch threads); all runs share one preprocessing cache.

Defaults by device (each can be overridden): CPU: patch 32 x 64 x 64 (z, y, x) at 3 mm, batch 2, 200 steps per
run, 0 loader workers; CUDA: patch 64 x 96 x 96, batch 2, 400 steps, bf16 autocast (TrainConfig's default), loader
workers = torch threads = max(1, cores // jobs) per run (the 'strong' augmentation costs ~0.17 s per 64 x 96 x 96
patch on one core of the CPU below, so 2 workers feed ~6 batches/s per run). The header names the deformable-attention
backend: on a GPU without the compiled op (`maskmed build-ops`) the FSA transformer runs the slower PyTorch reference.

CPU budget, measured on a 2-core Intel Xeon shared with other jobs (2 torch threads, --jobs 1, small preset, patch
32 x 64 x 64, batch 2, 'strong' augmentation):

- 5-step runs (first step included): maskmed 1.45-1.80 s/step, conv 1.02-1.07, no_fsa 1.22-1.67; ~15-20 s per run
  on top (start-up, preprocessing, the end-of-training validation on the training case, the held-out evaluation);
- 200-step runs (fold chest_abdomen_dicom): maskmed 337 s of training (1.64 s/step, load average 1.5-1.7), whole
  run 343 s; conv 402 s (1.89 s/step, while other processes pushed the load average to 4-5), whole run ~425 s;
- the full default ablation (2 folds x 3 variants x 200 steps), run 2026-11-27: 1844 s (31 minutes) wall, load
  average 1.5-2.2. At this scale the models are barely trained: held-out mean Dice maskmed 0.031, no_fsa 0.016,
  conv 0.000 (0.012 with the argmax rule), the liver being the only organ found. The CUDA defaults on an H200
  (250 steps, --jobs 6, 154 s wall) gave 0.001 / 0.000 / 0.000: with two cases, one a 13-slice slab, neither scale
  separates the heads.

    python3 -m benchmarks.ablation                                    # CPU defaults, both folds, three variants
    python3 -m benchmarks.ablation --steps 2 --patch-size 32 48 48 --batch-size 1 --workers 0 --jobs 2   # smoke test
    python3 -m benchmarks.ablation --device cuda --jobs 6 --output ablation.json                       # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from benchmarks._common import LABEL_MAPPING, REPO
from maskmed_core.evaluation import ClassScores, class_scores, summarize

DEFAULT_DATASET = REPO / "recipes" / "default_model" / "dataset.json"
DEFAULT_LABEL_MAPPING = Path(LABEL_MAPPING)

# variant -> (TrainConfig.head, TrainConfig.transformer)
VARIANTS: dict[str, tuple[str, bool]] = {
    "maskmed": ("decoupled", True),
    "conv": ("conv", True),
    "no_fsa": ("decoupled", False),
}
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"steps": 200, "patch_size": (32, 64, 64), "batch_size": 2},
    "cuda": {"steps": 400, "patch_size": (64, 96, 96), "batch_size": 2},
}
MISSING = "—"


# ----- metrics (pure, tested in Testing/test_ablation.py) ---------------------------------------------------------
def case_metrics(prediction, reference, class_names: list[str], spacing_zyx) -> ClassScores:
    """``maskmed_core.evaluation.class_scores`` for label maps of class indices 0..C, ``class_names`` in index order
    (index i + 1 is class_names[i])."""
    return class_scores(prediction, reference, {name: index + 1 for index, name in enumerate(class_names)},
                        spacing_zyx)


def average_over_folds(per_fold: list[ClassScores]) -> dict[str, dict[str, Any]]:
    """Class name -> mean Dice over the folds whose reference has it, mean HD95 over the folds where it exists."""
    names: list[str] = []
    for scores in per_fold:
        names += [n for n, s in scores.items() if s["status"] != "false_positive" and n not in names]
    result = {}
    for name in names:
        entries = [s[name] for s in per_fold if name in s and s[name]["status"] != "false_positive"]
        hd95 = [e["hd95"] for e in entries if e["hd95"] is not None]
        result[name] = {
            "dice": sum(e["dice"] for e in entries) / len(entries),
            "hd95": sum(hd95) / len(hd95) if hd95 else None,
            "folds": len(entries),
        }
    return result


def _number(value: float | None, digits: int) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(title: str, rows: dict[str, dict[str, dict[str, Any]]], variants: list[str],
                 means: dict[str, dict[str, Any]]) -> str:
    """rows: class -> variant -> {"dice", "hd95"} (a variant may lack the class); means: variant -> summary."""
    width = max([24, *(len(name) + 1 for name in rows)])
    cell = 17
    lines = [title, f"{'':{width}s}" + "".join(f"{v:>{cell}s}" for v in variants),
             f"{'class':{width}s}" + f"{'Dice':>9s}{'HD95 mm':>8s}" * len(variants)]
    lines.append("-" * len(lines[-1]))
    for name, per_variant in rows.items():
        line = f"{name:{width}s}"
        for variant in variants:
            entry = per_variant.get(variant)
            dice = _number(entry["dice"], 3) if entry else MISSING
            line += f"{dice:>9s}{_number(entry['hd95'], 1) if entry else MISSING:>8s}"
        lines.append(line)
    lines.append("-" * len(lines[2]))
    line = f"{'mean':{width}s}"
    for variant in variants:
        m = means[variant]
        line += f"{_number(m['mean_dice'], 3):>9s}{_number(m['mean_hd95'], 1):>8s}"
    lines.append(line)
    for label, key in (("classes with HD95", "classes_with_hd95"), ("missed classes", "missed_classes"),
                       ("false-positive classes", "false_positive_classes")):
        line = f"{label:{width}s}"
        for variant in variants:
            value = means[variant].get(key)
            count = len(value) if isinstance(value, list) else value
            line += f"{'' if count is None else count:>{cell}}"
        lines.append(line)
    return "\n".join(lines)


def verdict(mean_dice: dict[str, float], fold_means: dict[str, list[float]] | None = None,
            tie: float = 0.0005) -> str:
    """One honest line: the winner on mean Dice and its margin over each other variant (or a tie)."""
    ranked = sorted(mean_dice, key=lambda v: mean_dice[v], reverse=True)
    if len(ranked) < 2:
        return f"only {ranked[0]} was run (mean Dice {mean_dice[ranked[0]]:.3f}): nothing to compare"
    best = ranked[0]
    margins = ", ".join(f"{v} {mean_dice[v]:.3f} ({mean_dice[best] - mean_dice[v]:+.3f})" for v in ranked[1:])
    if mean_dice[best] - mean_dice[ranked[1]] < tie:
        tied = [v for v in ranked if mean_dice[best] - mean_dice[v] < tie]
        text = f"no winner on mean Dice: {', '.join(tied)} tie at {mean_dice[best]:.3f}"
        rest = [v for v in ranked if v not in tied]
        if rest:
            text += "; " + ", ".join(f"{v} {mean_dice[v]:.3f} ({mean_dice[v] - mean_dice[best]:+.3f})" for v in rest)
    else:
        text = f"{best} wins on mean Dice: {mean_dice[best]:.3f} vs {margins}"
    if fold_means and not text.startswith("no winner"):
        folds = len(fold_means[best])
        wins = sum(
            1 for i in range(folds) if all(fold_means[best][i] - fold_means[v][i] >= tie for v in ranked[1:])
        )
        text += f"; {best} strictly best in {wins} of {folds} fold(s)"
        if folds < 5:
            text += f" ({folds} fold(s): indicative, not significant)"
    return text


# ----- one run (worker process) -----------------------------------------------------------------------------------
def conv_argmax_indices(model, image, plans, device):
    """The conv head's label map by nnU-Net's rule: argmax over background and the C classes of the stitched softmax.

    ``predict_case_indices`` (the main numbers, every variant) labels a voxel only where its best class reaches the
    0.5 class threshold, MaskMed's rule; for a softmax head that is stricter than the argmax nnU-Net uses (a class
    can win with less than 0.5), which matters for an under-trained model, so the conv head gets this second number.
    """
    import numpy as np

    from maskmed_core.inference.sliding_window import sliding_window

    volume = np.asarray(image, dtype=np.float32)
    stitched = sliding_window(model, volume, plans.patch_size, plans.overlap, device=device)
    probabilities = stitched.masks  # the conv head: one "query" per class, its Gaussian-weighted softmax
    background = 1.0 - probabilities.sum(0, keepdims=True)
    return np.concatenate([background, probabilities]).argmax(0)


def worker(job_path: str) -> None:
    """Train one variant on one fold's training cases, evaluate on its held-out case, write result.json."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    from maskmed_core.atomic import atomic_path
    from maskmed_core.checkpoint import load_model_file
    from maskmed_core.events import Event, StepEvent
    from maskmed_core.label_mapping import read_label_mapping
    from maskmed_core.training.cache import preprocess_cases
    from maskmed_core.training.dataset import load_dataset
    from maskmed_core.training.trainer import TrainConfig, run_training
    from maskmed_core.training.validation import predict_case_indices

    mapping = read_label_mapping(job["label_mapping"]) if job["label_mapping"] else None
    known = {f.name for f in fields(TrainConfig)}
    values = {**job["train"], "label_mapping": mapping}
    values["spacing"] = tuple(values["spacing"]) if values.get("spacing") else None
    values["patch_size"] = tuple(values["patch_size"]) if values.get("patch_size") else None
    unknown = sorted(set(values) - known)
    if unknown:  # never drop a setting silently: a lost "head" or "transformer" would void the ablation
        raise RuntimeError(f"TrainConfig has no field(s) {', '.join(unknown)}: update benchmarks/ablation.py")
    config = TrainConfig(**values)
    loop: dict[str, float] = {}

    def report(event: Event) -> None:
        if isinstance(event, StepEvent):
            loop["seconds"], loop["loss"] = event.elapsed, event.loss

    started = time.perf_counter()
    summary = run_training(config, report)
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    device = torch.device("cuda" if config.device == "cuda" else "cpu")
    model_file = load_model_file(summary["last_model"])
    model = model_file.build_model(device)
    spec = load_dataset(job["test_dataset"], label_mapping=mapping)
    (case,) = preprocess_cases(
        spec, model_file.plans, [c.label for c in model_file.classes], config.cache_dir, label_mapping=mapping
    )
    prediction = predict_case_indices(model, case.image, model_file.plans, device)
    class_names = [c.name for c in model_file.classes]
    scores = case_metrics(prediction, np.asarray(case.labels), class_names, case.spacing_zyx)
    eval_seconds = time.perf_counter() - started
    argmax_scores = None
    if not model.head.shared_queries:  # the conv head: its argmax too
        started = time.perf_counter()
        argmax = conv_argmax_indices(model, case.image, model_file.plans, device)
        argmax_scores = case_metrics(argmax, np.asarray(case.labels), class_names, case.spacing_zyx)
        eval_seconds += time.perf_counter() - started
    result = {
        "fold": job["fold"], "variant": job["variant"], "steps": summary["steps"],
        "train_seconds": train_seconds, "loop_seconds": loop.get("seconds"),
        "seconds_per_step": loop["seconds"] / summary["steps"] if loop.get("seconds") and summary["steps"] else None,
        "final_loss": loop.get("loss"), "train_dice": summary.get("dice", {}),
        "eval_seconds": eval_seconds, "grid_shape": list(case.image.shape),
        "spacing_zyx": list(case.spacing_zyx), "scores": scores, "summary": summarize(scores),
        "argmax_scores": argmax_scores, "argmax_summary": summarize(argmax_scores) if argmax_scores else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    with atomic_path(Path(job["result"])) as temporary:
        temporary.write_text(json.dumps(result, indent=1), encoding="utf-8")


# ----- the driver -------------------------------------------------------------------------------------------------
def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _machine(device: str, threads: int, jobs: int) -> dict[str, Any]:
    import torch

    from maskmed_core.cli import _cpu_name

    info: dict[str, Any] = {
        "cpu": _cpu_name(), "cores": _cpu_count(), "torch": torch.__version__, "threads_per_run": threads,
        "jobs": jobs, "python": sys.version.split()[0],
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from maskmed_core.ops import active_backend

        # The FSA transformer's deformable attention: compiled op or the (slower) PyTorch reference.
        info["deform_attn_backend"] = active_backend(device)
    return info


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


class _Runner:
    """Runs worker processes; each in its own session so that an interrupt stops it and its loader workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: list[subprocess.Popen] = []

    def run(self, job: dict[str, Any], job_path: Path, log_path: Path, threads: int) -> dict[str, Any]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
        started = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.ablation", "--worker", str(job_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True,
            )
            with self.lock:
                self.processes.append(process)
            code = process.wait()
        wall = time.perf_counter() - started
        if code != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"run {job['fold']}/{job['variant']} failed (exit code {code}); log {log_path}:\n{tail}")
        result = json.loads(Path(job["result"]).read_text(encoding="utf-8"))
        result["wall_seconds"] = wall
        return result

    def stop(self) -> None:
        with self.lock:
            for process in self.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGTERM)  # the session this script started for it


def _write_case_list(path: Path, labels: dict[str, int], cases, description: str) -> None:
    data = {
        "description": description,
        "labels": labels,
        "cases": [{"name": c.name, "image": str(Path(c.image).resolve()),
                   "label": str(Path(c.label).resolve())} for c in cases],
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


@dataclass(frozen=True)
class _RunSettings:
    """What every run of one invocation shares, the command line's defaults filled in for the device."""

    device: str
    steps: int
    patch: tuple[int, ...]
    batch: int
    threads: int  # torch threads per run
    workers: int  # loader workers per run
    mapping_path: str | None


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    run = _run_settings(parser, args)
    labels, labelled, folds = _folds(parser, args, run.mapping_path)
    names = [c.name for c in labelled]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="maskmed-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    jobs = [job for fold in folds for job in _fold_jobs(fold, labels, labelled, args, run, work)]
    machine = _machine(run.device, run.threads, args.jobs)
    settings = {
        "dataset": str(Path(args.dataset).resolve()), "label_mapping": run.mapping_path, "cases": names,
        "folds": folds, "variants": args.variants, "preset": args.preset, "spacing_zyx": list(args.spacing),
        "patch_size_zyx": list(run.patch), "batch_size": run.batch, "steps": run.steps,
        "learning_rate": args.learning_rate, "warmup_steps": min(50, run.steps // 5),
        "augmentation": args.augmentation, "seed": args.seed, "workers": run.workers, "device": run.device,
        "jobs": args.jobs,
    }
    load_start = _load_average()
    _print_start(machine, settings, run, work, load_start)
    results, total = _run_jobs(jobs, args.jobs, run.threads, work, keep=bool(args.work_dir))
    report = _report(results, folds, args.variants, settings, machine, load_start, total)
    if args.output:
        from maskmed_core.atomic import atomic_path

        with atomic_path(Path(args.output)) as temporary:
            temporary.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"all numbers: {args.output}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="JSON/CSV case list or nnU-Net folder")
    parser.add_argument("--label-mapping", help="label value mapping JSON (default with the default dataset: "
                        "../shared/data/amos15_from_totalseg_v2.json; 'none' for no mapping)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--folds", nargs="+", help="held-out case names (default: every labelled case)")
    parser.add_argument("--preset", default="small", choices=("small", "base"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), metavar=("Z", "Y", "X"))
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="default: CPU 32 64 64, CUDA 64 96 96")
    parser.add_argument("--batch-size", type=int, help="default 2")
    parser.add_argument("--steps", type=int, help="training steps per run (default: CPU 200, CUDA 400)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--augmentation", default="strong", choices=("default", "strong", "none"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="loader workers per run (default: CPU 0, CUDA cores // jobs)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--work-dir", help="keep the runs (models, logs, cache) here (default: a temporary folder)")
    parser.add_argument("--output", help="write every number to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def _run_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> _RunSettings:
    """The device, its defaults for what the command line left out, threads and workers per run, the mapping file."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is usable here")
    defaults = DEVICE_DEFAULTS[device]
    steps = args.steps if args.steps is not None else defaults["steps"]
    patch = tuple(args.patch_size) if args.patch_size else defaults["patch_size"]
    batch = args.batch_size if args.batch_size is not None else defaults["batch_size"]
    if steps < 1 or batch < 1 or args.jobs < 1:
        parser.error("--steps, --batch-size and --jobs must be at least 1")
    threads = max(1, _cpu_count() // args.jobs)
    workers = args.workers if args.workers is not None else (0 if device == "cpu" else threads)
    return _RunSettings(device, steps, patch, batch, threads, workers, _mapping_path(args))


def _mapping_path(args: argparse.Namespace) -> str | None:
    """The label mapping file (absolute): the given one, the default dataset's, or None ('none')."""
    mapping_path: str | None = args.label_mapping
    if mapping_path is None and Path(args.dataset).resolve() == DEFAULT_DATASET.resolve():
        mapping_path = str(DEFAULT_LABEL_MAPPING)
    if mapping_path is not None and mapping_path.lower() == "none":
        mapping_path = None
    return str(Path(mapping_path).resolve()) if mapping_path else None


def _folds(parser: argparse.ArgumentParser, args: argparse.Namespace, mapping_path: str | None):
    """(the dataset's labels, its labelled cases, the held-out case names): leave-one-case-out over 2+ cases."""
    from maskmed_core.label_mapping import read_label_mapping
    from maskmed_core.training.dataset import load_dataset

    mapping = read_label_mapping(mapping_path) if mapping_path else None
    spec = load_dataset(args.dataset, label_mapping=mapping)
    labelled = [c for c in spec.cases if c.label is not None]
    names = [c.name for c in labelled]
    if len(labelled) < 2:
        parser.error(f"leave-one-case-out needs at least 2 labelled cases; {args.dataset} has {len(labelled)}")
    folds = args.folds or names
    unknown = [f for f in folds if f not in names]
    if unknown:
        parser.error(f"--folds: no labelled case named {', '.join(unknown)} (cases: {', '.join(names)})")
    return spec.labels, labelled, folds


def _fold_jobs(fold: str, labels: dict[str, int], labelled, args: argparse.Namespace, run: _RunSettings,
               work: Path) -> list[dict[str, Any]]:
    """One job per variant for the fold that holds ``fold`` out; writes the fold's case lists, empties its runs."""
    fold_dir = work / fold
    fold_dir.mkdir(exist_ok=True)
    training = [c for c in labelled if c.name != fold]
    held_out = [c for c in labelled if c.name == fold]
    _write_case_list(fold_dir / "train.json", labels, training, f"ablation fold {fold}: training cases")
    _write_case_list(fold_dir / "test.json", labels, held_out, f"ablation fold {fold}: held-out case")
    jobs = []
    for variant in args.variants:
        run_dir = fold_dir / variant
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a fresh run, never resumed
        run_dir.mkdir()
        head, transformer = VARIANTS[variant]
        jobs.append({
            "fold": fold, "variant": variant, "threads": run.threads, "label_mapping": run.mapping_path,
            "test_dataset": str(fold_dir / "test.json"), "result": str(run_dir / "result.json"),
            "training_cases": [c.name for c in training],
            "train": {
                "dataset": str(fold_dir / "train.json"), "output": str(run_dir), "preset": args.preset,
                "spacing": list(args.spacing), "patch_size": list(run.patch), "epochs": 1,
                "steps_per_epoch": run.steps, "batch_size": run.batch, "learning_rate": args.learning_rate,
                "warmup_steps": min(50, run.steps // 5), "val_every": 1, "device": run.device,
                "num_workers": run.workers, "seed": args.seed, "augmentation": args.augmentation, "head": head,
                "transformer": transformer, "cache_dir": str(work / "cache"),
            },
        })
    return jobs


def _print_start(machine: dict[str, Any], settings: dict[str, Any], run: _RunSettings, work: Path,
                 load_start: list[float]) -> None:
    where = machine.get("gpu", f"CPU {machine['cpu']}")
    print(f"machine: {where}; {machine['cores']} cores ({machine['cpu']}), torch {machine['torch']}, "
          f"{settings['jobs']} run(s) at once with {run.threads} torch thread(s) and {run.workers} loader worker(s) "
          f"each; deformable attention: {machine['deform_attn_backend']} op")
    print(f"load average (1, 5, 15 min) at the start: {', '.join(map(str, load_start))}")
    spacing = settings["spacing_zyx"]
    print(f"settings: {settings['preset']} preset, patch {' x '.join(map(str, run.patch))} (z, y, x) at "
          f"{' x '.join(f'{s:g}' for s in spacing)} mm, batch {run.batch}, {run.steps} steps per run, lr "
          f"{settings['learning_rate']:g} (warm-up {settings['warmup_steps']}, poly), {settings['augmentation']!r} "
          f"augmentation, seed {settings['seed']}, {run.device}; leave-one-case-out over "
          f"{', '.join(settings['cases'])} (held out here: {', '.join(settings['folds'])}); work dir {work}",
          flush=True)


def _run_jobs(jobs: list[dict[str, Any]], parallel: int, threads: int, work: Path,
              keep: bool) -> tuple[list[dict[str, Any]], float]:
    """(each job's result, in job order; the wall time in s). Runs ``parallel`` worker processes at once; an
    interrupt stops them all; the work folder goes unless ``keep``."""
    runner = _Runner()
    results: list[dict[str, Any]] = []
    started = time.perf_counter()

    def one(job: dict[str, Any]) -> dict[str, Any]:
        run_dir = Path(job["train"]["output"])
        job_path = run_dir / "job.json"
        job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
        result = runner.run(job, job_path, run_dir / "log.txt", threads)
        _print_done(job, result)
        return result

    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for future in futures:
                results.append(future.result())
    except BaseException:
        runner.stop()
        raise
    finally:
        total = time.perf_counter() - started
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results, total


def _print_done(job: dict[str, Any], result: dict[str, Any]) -> None:
    s = result["summary"]
    per_step = result["seconds_per_step"]
    print(f"  done {job['fold']} / {job['variant']}: {result['steps']} steps in {result['train_seconds']:.0f} s "
          f"({_number(per_step, 2)} s/step), evaluation {result['eval_seconds']:.0f} s, whole run "
          f"{result['wall_seconds']:.0f} s; held-out mean Dice {_number(s['mean_dice'], 3)} (training case(s) "
          f"{_number(_mean(result['train_dice'].values()), 3)}); load average "
          f"{', '.join(map(str, _load_average()))}", flush=True)


def _report(results: list[dict[str, Any]], folds: list[str], variants: list[str], settings: dict[str, Any],
            machine: dict[str, Any], load_start: list[float], total: float) -> dict[str, Any]:
    """Print each fold's table, the average over the folds and the verdict; return every number."""
    by_key = {(r["fold"], r["variant"]): r for r in results}
    fold_means: dict[str, list[float]] = {v: [] for v in variants}
    argmax_means: dict[str, list[float]] = {}
    print()
    for fold in folds:
        runs = {v: by_key[(fold, v)] for v in variants}
        _print_fold(fold, runs, variants, settings)
        for v in variants:
            fold_means[v].append(runs[v]["summary"]["mean_dice"])
            argmax = runs[v].get("argmax_summary")
            if argmax:
                argmax_means.setdefault(v, []).append(argmax["mean_dice"])
        print()
    averaged = {v: average_over_folds([by_key[(f, v)]["scores"] for f in folds]) for v in variants}
    means = {v: _variant_means([by_key[(f, v)]["summary"] for f in folds], fold_means[v]) for v in variants}
    _print_average(averaged, means, variants, len(folds))
    load_end = _load_average()
    train_total = sum(r["train_seconds"] for r in results)
    print()
    print(f"wall time {total:.0f} s for {len(results)} runs ({train_total:.0f} s of training runs summed, "
          f"{settings['steps']} steps each); load average (1, 5, 15 min) at the start "
          f"{', '.join(map(str, load_start))}, at the end {', '.join(map(str, load_end))} "
          f"(above {machine['cores']} means other processes shared the CPU)")
    line = _verdict_line(means, fold_means, argmax_means, variants)
    print(f"verdict: {line}")
    return {
        "settings": settings, "machine": machine, "load_average_start": load_start, "load_average_end": load_end,
        "wall_seconds": total, "runs": results, "average": {"per_class": averaged, "means": means},
        "verdict": line,
    }


def _print_fold(fold: str, runs: dict[str, dict[str, Any]], variants: list[str], settings: dict[str, Any]) -> None:
    """The fold's table (every class of any variant's reference) and one line per variant (and its argmax rule)."""
    reference: list[str] = []
    for v in variants:
        reference += [n for n, s in runs[v]["scores"].items() if s["status"] != "false_positive"
                      and n not in reference]
    rows = {n: {v: runs[v]["scores"][n] for v in variants} for n in reference}
    first = runs[variants[0]]
    title = (f"fold {fold} (held out; trained on {', '.join(_training_cases(settings, fold))}), model grid "
             f"{' x '.join(map(str, first['grid_shape']))} at {' x '.join(f'{s:g}' for s in first['spacing_zyx'])}"
             f" mm")
    print(format_table(title, rows, variants, {v: runs[v]["summary"] for v in variants}))
    for v in variants:
        _print_variant_line(v, runs[v])


def _print_variant_line(variant: str, run: dict[str, Any]) -> None:
    s = run["summary"]
    extra = []
    if s["missed_classes"]:
        extra.append(f"missed {', '.join(s['missed_classes'])}")
    if s["false_positive_classes"]:
        extra.append(f"false positives {', '.join(s['false_positive_classes'])}")
    print(f"  {variant}: train {run['train_seconds']:.0f} s ({run['steps']} steps, "
          f"{_number(run['seconds_per_step'], 2)} s/step), evaluation {run['eval_seconds']:.0f} s"
          f"{'; ' + '; '.join(extra) if extra else ''}")
    argmax = run.get("argmax_summary")
    if argmax:
        print(f"  {variant} with nnU-Net's argmax rule instead of the 0.5 class threshold: mean Dice "
              f"{_number(argmax['mean_dice'], 3)}, mean HD95 {_number(argmax['mean_hd95'], 1)} mm over "
              f"{argmax['classes_with_hd95']} class(es), {len(argmax['missed_classes'])} missed, "
              f"{len(argmax['false_positive_classes'])} false-positive class(es)")


def _variant_means(summaries: list[dict[str, Any]], fold_means: list[float]) -> dict[str, Any]:
    """One variant over the folds: mean of the fold means, mean HD95 where it exists, counts summed."""
    hd95 = [s["mean_hd95"] for s in summaries if s["mean_hd95"] is not None]
    return {
        "mean_dice": sum(fold_means) / len(fold_means),
        "mean_hd95": sum(hd95) / len(hd95) if hd95 else None,
        "classes_with_hd95": sum(s["classes_with_hd95"] for s in summaries),
        "missed_classes": sum(len(s["missed_classes"]) for s in summaries),
        "false_positive_classes": sum(len(s["false_positive_classes"]) for s in summaries),
    }


def _print_average(averaged: dict[str, dict[str, dict[str, Any]]], means: dict[str, dict[str, Any]],
                   variants: list[str], folds: int) -> None:
    names: list[str] = []
    for v in variants:
        names += [n for n in averaged[v] if n not in names]
    rows = {n: {v: averaged[v][n] for v in variants if n in averaged[v]} for n in names}
    print(format_table(f"average over {folds} fold(s) (class: mean over the folds whose reference has it; "
                       "mean: mean of the fold means; counts: summed over folds)", rows, variants, means))


def _verdict_line(means: dict[str, dict[str, Any]], fold_means: dict[str, list[float]],
                  argmax_means: dict[str, list[float]], variants: list[str]) -> str:
    """The verdict on mean Dice, then each argmax-rule mean (stored into ``means[v]["argmax_mean_dice"]``)."""
    line = verdict({v: means[v]["mean_dice"] for v in variants}, fold_means)
    best = max(variants, key=lambda v: means[v]["mean_dice"])
    for v, values in argmax_means.items():
        value = means[v]["argmax_mean_dice"] = sum(values) / len(values)
        line += f"; {v} with nnU-Net's argmax rule: {value:.3f}"
        if v != best:
            line += f" ({value - means[best]['mean_dice']:+.3f} vs the best above, {best})"
    return line


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _training_cases(settings: dict[str, Any], fold: str) -> list[str]:
    return [c for c in settings["cases"] if c != fold]


if __name__ == "__main__":
    main()
