"""Fine-tuning as a user meets it: add a structure the default model lacks from 1-3 labelled CTs, on the CPU, and
score the result on the held-out CT s0009 (never trained on): the new class's Dice, and the mean Dice of the model's
own classes before and after (forgetting).

Each run is ``maskmed train CASES --init MODEL -o OUT --time-limit MINUTES --label-mapping NEW.json`` in a child
process with ``--threads`` torch threads, where CASES labels only the new structure (the user painted it; their
label maps know nothing else), plus the options of the variant:

* ``default``: nothing else (distillation of the model's classes on the user's images, rehearsal on the shipped
  label maps, the new class row imprinted from a free query that covers it, new classes matched only to free
  queries, the encoder frozen, the model's own mirror axes);
* ``no-distill``: ``--absent-classes freeze`` (the former ``--keep-absent-classes``); ``no-rehearsal``:
  ``--rehearsal 0``; ``train-encoder``: ``--no-freeze-encoder`` (the encoder learns too); ``former``:
  ``--absent-classes freeze --rehearsal 0 --mirror-axes zyx --no-freeze-encoder``, what a fine-tune did before these
  levers existed (when asked to keep the model's classes).

Usage (from the repository root, with ../shared/data beside it):
    python3 -m benchmarks.finetune [--scenarios iliopsoas portal_vein vertebrae] [--cases 1 2 3] [--minutes 5 10 20]
        [--variants default former] [--threads 2] [--workdir runs/finetune_benchmark]
Prints one table row per run (scenario, cases, variant, minutes, steps, peak RSS, new-class Dice, mean Dice of the
model's classes and its change) and writes them to WORKDIR/results.jsonl (appended; a run already there is not run
again, so an interrupted benchmark continues).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks._common import REPO, SHARED_DATA, print_machine
from maskmed_core.training.run_files import BEST_MODEL, LOG_FILE

DEFAULT_MODEL = REPO / "maskmed_core" / "resources" / "default.maskmed"
DEMO = REPO / "maskmed_core" / "resources" / "demo"
SCORING_CT = DEMO / "s0009_ct.nii.gz"  # held out: scored on, never trained on
SCORING_LABELS = DEMO / "s0009_totalseg.nii.gz"
AMOS_TOTALSEG_IDS = DEMO / "amos15_from_totalseg_v2.json"
SUBJECTS = SHARED_DATA / "totalseg_subjects"
CT = SHARED_DATA / "ct"
# The labelled CTs a user might have, in the order a scenario takes them (never s0009).
ABDOMEN = (CT / "abdomen_ct_3mm.nii.gz", CT / "abdomen_ct_3mm_totalseg.nii.gz")
CHEST_ABDOMEN = (CT / "chest_abdomen_dicom", CT / "chest_abdomen_dicom_totalseg.nii.gz")
NECK_THORAX = (SUBJECTS / "s0002_ct.nii.gz", SUBJECTS / "s0002_totalseg.nii.gz")
SPINE = (SUBJECTS / "s0003_ct.nii.gz", SUBJECTS / "s0003_totalseg.nii.gz")


@dataclass(frozen=True)
class Scenario:
    """A structure to add: its class names -> TotalSegmentator v2 ids, and the labelled CTs that hold it."""

    new_classes: dict[str, tuple[int, ...]]
    cases: tuple[tuple[Path, Path], ...]
    size: str  # "large" or "small" (the goals differ), or "existing": a class the model has, improved


SCENARIOS = {
    # Large muscles, in the abdomen CT only (the DICOM slab and s0002/s0003 do not reach the pelvis).
    "iliopsoas": Scenario({"left iliopsoas": (88,), "right iliopsoas": (89,)}, (ABDOMEN,), "large"),
    # A vessel: in the abdomen CT and the contrast-enhanced DICOM slab.
    "portal_vein": Scenario({"portal and splenic vein": (64,)}, (ABDOMEN, CHEST_ABDOMEN), "small"),
    # A bone group, in every CT we have.
    "vertebrae": Scenario({"vertebrae": tuple(range(26, 51))}, (ABDOMEN, NECK_THORAX, SPINE, CHEST_ABDOMEN), "large"),
    # Not a new class: the user improves one the model has (its weakest large organ on s0009) from local labels.
    "pancreas": Scenario({"pancreas": (7,)}, (ABDOMEN, CHEST_ABDOMEN), "existing"),
}
VARIANTS = {
    "default": [],
    "no-distill": ["--absent-classes", "freeze"],
    "no-rehearsal": ["--rehearsal", "0"],
    "former": ["--absent-classes", "freeze", "--rehearsal", "0", "--mirror-axes", "zyx", "--no-freeze-encoder"],
    "train-encoder": ["--no-freeze-encoder"],
}


def write_dataset(scenario: Scenario, cases: int, folder: Path) -> tuple[Path, Path]:
    """A .json case list of the scenario's first ``cases`` CTs labelled with the new classes only, and its label
    mapping (TotalSegmentator id -> new label value; every other id is background, as in a user's label map)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{name: value for value, name in enumerate(scenario.new_classes, 1)}}
    mapping = {str(ts_id): labels[name] for name, ids in scenario.new_classes.items() for ts_id in ids}
    case_list = folder / "cases.json"
    case_list.write_text(json.dumps({"labels": labels, "cases": [
        {"image": str(image), "label": str(label)} for image, label in scenario.cases[:cases]]}, indent=1))
    mapping_file = folder / "mapping.json"
    mapping_file.write_text(json.dumps(mapping))
    return case_list, mapping_file


def totalseg_ids_by_name(scenario: Scenario) -> dict[str, tuple[int, ...]]:
    """Class name -> TotalSegmentator ids, for the default model's 15 classes and the scenario's new ones."""
    amos = json.loads(AMOS_TOTALSEG_IDS.read_text(encoding="utf-8"))["classes"]
    return {**{c["name"]: (int(c["totalseg_v2_id"]),) for c in amos}, **scenario.new_classes}


def score_on_s0009(model: Path, ids_by_name: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """Dice per class name on s0009 (classes present in its reference; a missed one scores 0)."""
    import SimpleITK as sitk

    from maskmed_core.evaluation import class_scores, scores_in_reference
    from maskmed_core.inference import Predictor

    predictor = Predictor.from_file(model, "cpu")
    image = sitk.ReadImage(str(SCORING_CT))
    prediction = sitk.GetArrayFromImage(predictor.predict(image).label_map())
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(SCORING_LABELS)))
    values = {c.name: c.label for c in predictor.classes if c.name in ids_by_name}
    reference = np.zeros_like(prediction)
    for name, value in values.items():
        reference[np.isin(raw, ids_by_name[name])] = value
    spacing_zyx = tuple(reversed(image.GetSpacing()))
    scores = class_scores(prediction, reference, values, spacing_zyx)
    return {name: score["dice"] for name, score in scores_in_reference(scores).items()}


def fine_tune(case_list: Path, mapping: Path | None, output: Path, minutes: float, extra: list[str], threads: int,
              init: Path = DEFAULT_MODEL) -> dict:
    """One ``maskmed train --init`` run in a child process; (steps, seconds, peak RSS of the process tree)."""
    import psutil

    command = [sys.executable, "-m", "maskmed_core.cli", "train", str(case_list), "-o", str(output), "--init",
               str(init), "--time-limit", str(minutes), "--device", "cpu", *extra]
    if mapping is not None:
        command += ["--label-mapping", str(mapping)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start, peak = time.perf_counter(), 0
    with open(output.parent / f"{output.name}.log", "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
        tree = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                processes = [tree, *tree.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in processes))
            except psutil.Error:
                pass
            time.sleep(1.0)
    if child.returncode != 0:
        raise RuntimeError(f"maskmed train exited with {child.returncode}: see {output}.log")
    history = [json.loads(line) for line in (output / LOG_FILE).read_text().splitlines()]
    return {"steps": history[-1]["step"], "seconds": time.perf_counter() - start, "peak_rss_gib": peak / 2**30}


def add_structure(scenario: str, cases: int, folder: Path, minutes: float, extra: list[str], threads: int,
                  init: Path = DEFAULT_MODEL) -> dict:
    """Fine-tune ``init`` on the scenario's first ``cases`` CTs (the new structure's labels only) with the options
    ``extra``; the run's record with the fine-tuned model's Dice on s0009."""
    case_list, mapping = write_dataset(SCENARIOS[scenario], cases, folder)
    record = fine_tune(case_list, mapping, folder / "out", minutes, extra, threads, init=init)
    ids = totalseg_ids_by_name(SCENARIOS[scenario])
    return {**record, "dice": score_on_s0009(folder / "out" / BEST_MODEL, ids)}


def score_record(model: Path, ids_by_name: dict[str, tuple[int, ...]]) -> dict:
    return {"dice": score_on_s0009(model, ids_by_name)}


class Results:
    """``WORKDIR/results.jsonl``: one record per run, appended when it ends, so an interrupted benchmark continues
    (a run already there is not run again)."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.file = workdir / "results.jsonl"
        lines = self.file.read_text().splitlines() if self.file.is_file() else []
        self.done = {json.loads(line)["run"]: json.loads(line) for line in lines}

    def get(self, key: str, run: Callable[[], dict]) -> dict:
        """The record of run ``key``, running ``run`` for it first if there is none."""
        if key not in self.done:
            self.done[key] = {"run": key, **run()}
            with self.file.open("a", encoding="utf-8") as results:
                results.write(json.dumps(self.done[key]) + "\n")
        return self.done[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=["iliopsoas"])
    parser.add_argument("--cases", nargs="+", type=int, default=[1], help="labelled CTs per run (as many as there are)")
    parser.add_argument("--minutes", nargs="+", type=float, default=[5, 10, 20])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each fine-tune")
    parser.add_argument("--workdir", default="runs/finetune_benchmark", help="runs and results.jsonl (kept)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    results = Results(workdir)
    print_machine("numpy")
    print(f"scoring CT: {SCORING_CT.name} (held out); threads per fine-tune: {args.threads}")
    print(f"{'scenario':12s} {'CTs':>3s} {'variant':13s} {'min':>4s} {'steps':>5s} {'RSS GiB':>7s} "
          f"{'new class Dice':>24s} {'own mean':>8s} {'change':>7s}")
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        ids = totalseg_ids_by_name(scenario)
        before = results.get(f"{name}/before", partial(score_record, DEFAULT_MODEL, ids))["dice"]
        own_before = float(np.mean([before.get(c, 0.0) for c in before if c not in scenario.new_classes]))
        for cases in [c for c in args.cases if c <= len(scenario.cases)]:
            for variant in args.variants:
                for minutes in args.minutes:
                    key = f"{name}/{cases}/{variant}/{minutes:g}"
                    record = results.get(key, partial(add_structure, name, cases, workdir / key.replace("/", "_"),
                                                      minutes, VARIANTS[variant], args.threads))
                    new = " ".join(f"{record['dice'].get(c, 0.0):.3f}" for c in scenario.new_classes)
                    own = [record["dice"].get(c, 0.0) for c in before if c not in scenario.new_classes]
                    print(f"{name:12s} {cases:3d} {variant:13s} {minutes:4g} {record['steps']:5d} "
                          f"{record['peak_rss_gib']:7.2f} {new:>24s} {np.mean(own):8.3f} "
                          f"{np.mean(own) - own_before:+7.3f}", flush=True)
        others = [c for c in before if c not in scenario.new_classes]
        improved = "".join(f"; {c} {before[c]:.3f}" for c in scenario.new_classes if c in before)
        print(f"{name}: on s0009 before fine-tuning: the model's other classes mean {own_before:.3f} over "
              f"{len(others)}{improved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
