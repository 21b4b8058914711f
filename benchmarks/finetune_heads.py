"""The paper's claim where users feel it: adding a structure to a model with the decoupled head (a new class row over
shared object queries) against the point-wise conv head (a new output channel), from the same encoder, at equal CPU
minutes, scored on the held-out CT s0009 (issue 22, item 5).

There is no trained conv-head model to start from, and training one as long as the default model is beyond a CPU
session, so the conv head's starting model is the default model's twin:

1. ``conv_start.maskmed``: the default model's encoder, FSA transformer and pixel decoder (every weight whose name and
   shape match) under a fresh point-wise conv head (and the full-resolution decoder stage the conv head adds);
2. ``conv_twin``: that model fitted for ``--twin-minutes`` by ``maskmed train`` to the default model's own label
   maps of the scenario's CTs (its 15 classes; the same CTs the fine-tune then labels), with the shipped rehearsal
   label maps as in every fine-tune, at ``--twin-learning-rate`` (a fresh head: at the fine-tune's 3e-4 the first
   twin's loss barely moved in 72 steps and it scored 0 on every class). Its Dice on s0009 before fine-tuning is
   printed beside the default model's: the comparison is only as fair as the twin is close.

Then both heads are fine-tuned with the same command (``benchmarks.finetune``'s ``default`` variant: the user's
labels of the new structure only, distillation of the model's classes by the starting model, rehearsal), the same
minutes and threads; the decoupled head from the default model, the conv head from its twin.

Usage (from the repository root, with ../shared/data beside it):
    python3 -m benchmarks.finetune_heads [--scenario iliopsoas] [--cases 1] [--minutes 20] [--twin-minutes 30]
        [--twin-learning-rate 3e-3] [--threads 1] [--workdir runs/finetune_heads]
Prints one row per head (steps, peak RSS, new-class Dice, mean Dice of the 15 own classes before and after); the
records go to WORKDIR/results.jsonl (a run already there is not run again).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks._common import print_machine
from benchmarks.finetune import (
    DEFAULT_MODEL,
    SCENARIOS,
    SCORING_CT,
    Results,
    add_structure,
    fine_tune,
    score_record,
    totalseg_ids_by_name,
)
from maskmed_core.training.run_files import BEST_MODEL


def conv_start_model(path: Path) -> Path:
    """The default model's encoder, transformer and pixel decoder under a fresh conv head, written to ``path``."""
    import torch

    from maskmed_core.checkpoint import load_model_file, save_model_file
    from maskmed_core.model import MaskMed

    default = load_model_file(DEFAULT_MODEL)
    config = copy.deepcopy(default.config)
    config.head.kind = "conv"
    torch.manual_seed(0)
    model = MaskMed(config)
    own = model.state_dict()
    shared = {key: value for key, value in default.state_dict.items()
              if key in own and own[key].shape == value.shape}
    model.load_state_dict(shared, strict=False)
    print(f"conv start: {len(shared)} of {len(own)} weights from the default model "
          f"({sum(own[k].numel() for k in shared) / sum(v.numel() for v in own.values()):.0%} of the parameters)")
    return save_model_file(path, model, default.plans, default.classes, extra=default.extra)


def pseudo_labelled_cases(cases: tuple[tuple[Path, Path], ...], folder: Path) -> Path:
    """A case list of ``cases``' CTs labelled by the default model's own predictions (its 15 classes)."""
    import SimpleITK as sitk

    from maskmed_core.inference import Predictor
    from maskmed_core.io import read_image

    folder.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_file(DEFAULT_MODEL, "cpu")
    entries = []
    for index, (image_path, _) in enumerate(cases):
        label_path = folder / f"case{index}_default_model_labels.nii.gz"
        if not label_path.is_file():
            sitk.WriteImage(predictor.predict(read_image(image_path)).label_map(), str(label_path))
        entries.append({"image": str(image_path), "label": str(label_path.resolve())})
    labels = {"background": 0, **{c.name: c.label for c in predictor.classes}}
    case_list = folder / "cases.json"
    case_list.write_text(json.dumps({"labels": labels, "cases": entries}, indent=1))
    return case_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="iliopsoas")
    parser.add_argument("--cases", type=int, default=1, help="labelled CTs (as many as the scenario has)")
    parser.add_argument("--minutes", type=float, default=20, help="fine-tune minutes, each head")
    parser.add_argument("--twin-minutes", type=float, default=30, help="minutes to fit the conv twin")
    parser.add_argument("--twin-learning-rate", type=float, default=3e-3, help="peak learning rate of the twin's fit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training run")
    parser.add_argument("--workdir", default="runs/finetune_heads", help="runs and results.jsonl (kept)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    results = Results(workdir)
    scenario = SCENARIOS[args.scenario]
    cases = scenario.cases[:args.cases]
    ids = totalseg_ids_by_name(scenario)
    prefix = f"{args.scenario}/{len(cases)}"
    print_machine("numpy")
    print(f"scoring CT: {SCORING_CT.name} (held out); threads per run: {args.threads}")
    twin_folder = workdir / f"{args.scenario}_{len(cases)}_conv_twin"
    start = twin_folder / "conv_start.maskmed"
    if not start.is_file():
        twin_folder.mkdir(parents=True, exist_ok=True)
        conv_start_model(start)
    twin_name = f"{args.twin_minutes:g}min_lr{args.twin_learning_rate:g}"  # the conv runs' records name their twin
    twin_key = f"{prefix}/conv-twin/{twin_name}"
    twin_cases = pseudo_labelled_cases(cases, twin_folder / "pseudo")
    twin_options = ["--learning-rate", str(args.twin_learning_rate)]
    twin_out = twin_folder / f"out_{twin_name}"
    twin = results.get(twin_key, partial(fine_tune, twin_cases, None, twin_out, args.twin_minutes, twin_options,
                                         args.threads, init=start))
    twin_model = twin_out / BEST_MODEL
    starts = {"decoupled": DEFAULT_MODEL, "conv": twin_model}
    records = {"decoupled": f"{prefix}/decoupled", "conv": f"{prefix}/conv_{twin_name}"}
    before = {head: results.get(f"{records[head]}/before", partial(score_record, model, ids))
              for head, model in starts.items()}
    print(f"conv twin fitted in {twin['steps']} steps ({args.twin_minutes:g} min, learning rate "
          f"{args.twin_learning_rate:g})")
    print(f"{'head':10s} {'min':>4s} {'steps':>5s} {'RSS GiB':>7s} {'new class Dice':>24s} {'own before':>10s} "
          f"{'own after':>9s} {'change':>7s}")
    for head, model in starts.items():
        key = f"{records[head]}/{args.minutes:g}"
        after = results.get(key, partial(add_structure, args.scenario, len(cases), workdir / key.replace("/", "_"),
                                         args.minutes, [], args.threads, init=model))
        own = [c for c in before[head]["dice"] if c not in scenario.new_classes]
        own_before = float(np.mean([before[head]["dice"][c] for c in own]))
        own_after = float(np.mean([after["dice"].get(c, 0.0) for c in own]))
        new = " ".join(f"{after['dice'].get(c, 0.0):.3f}" for c in scenario.new_classes)
        print(f"{head:10s} {args.minutes:4g} {after['steps']:5d} {after['peak_rss_gib']:7.2f} {new:>24s} "
              f"{own_before:10.3f} {own_after:9.3f} {own_after - own_before:+7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
