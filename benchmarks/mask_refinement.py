"""Finer masks (issue 25, lever 2): what `--mask-refine-levels` costs per prediction on a CPU, beside what it gains.

Two model files side by side in one run, on one CT with a reference label map (default: the held-out s0009 bundled
as the demo, scored against its TotalSegmentator dataset labels mapped to the 15 AMOS classes):

- the baseline (default: the shipped model) and the refined model (default: the baseline grown by one refinement
  stage with the zero-initialised projection `maskmed train --mask-refine-levels 1` starts from: the same
  predictions, so the pure cost; give `--refined` a trained file, with `--baseline` its equal-budget twin, for the
  gain);
- per model, in a fresh child process: the wall and CPU time of what `maskmed predict` does in memory (model file
  loaded, the CT read, sliding-window inference, the label map), its peak RSS (VmHWM), and "others", the cores
  other processes kept busy meanwhile (on a shared machine anything above ~0.2 inflates the times); then, in
  another child, `maskmed evaluate --json` for per-class Dice;
- the refined / baseline ratios of time and peak RSS, and the Dice differences class by class.

    python3 -m benchmarks.mask_refinement --threads 1
    python3 -m benchmarks.mask_refinement --baseline runs/res_base/best.maskmed --refined runs/res_fine/best.maskmed
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from benchmarks._common import GIB, REPO, cpu_seconds, measure, peak_rss_bytes, print_machine, run_child, run_in_workdir

DEMO = REPO / "maskmed_core" / "resources" / "demo"
DEFAULT_CT = DEMO / "s0009_ct.nii.gz"
DEFAULT_LABELS = DEMO / "s0009_totalseg.nii.gz"
DEFAULT_MAPPING = DEMO / "amos15_from_totalseg_v2.json"
SMALL_CLASSES = ("right adrenal gland", "left adrenal gland", "gallbladder", "pancreas", "esophagus")


def grow(baseline: str, path: str, levels: int) -> None:
    """Save ``baseline`` grown by ``levels`` refinement stages, zero-initialised as `maskmed train` grows it."""
    import copy

    from maskmed_core.checkpoint import load_model_file, save_model_file
    from maskmed_core.model import MaskMed
    from maskmed_core.training.finetune import grown_weights

    source = load_model_file(baseline)
    config = copy.deepcopy(source.config)
    config.pixel_decoder.mask_refine_levels = source.config.pixel_decoder.mask_refine_levels + levels
    model = MaskMed(config)
    model.load_state_dict({**source.state_dict, **grown_weights(model, source.config)})
    save_model_file(path, model, source.plans, source.classes, source.extra)


def timed_prediction(model: str, ct: str, threads: int) -> dict:
    """What `maskmed predict` does in memory, timed from the model file to the label map (torch imported first)."""
    import torch

    torch.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    from maskmed_core.inference import Predictor

    predictor = Predictor.from_file(model, "cpu")
    result = predictor.predict(ct)
    result.label_map()
    return {"seconds": time.perf_counter() - start, "cpu_total": cpu_seconds() - cpu_start,
            "peak_rss": peak_rss_bytes(), "mask_level": predictor.model.config.pixel_decoder.mask_output_level}


def dice_per_class(model: str, ct: str, labels: str, mapping: str, threads: int) -> dict:
    """`maskmed evaluate --json`'s per-class Dice and mean (over the classes in the reference)."""
    import torch

    from maskmed_core.cli import main

    torch.set_num_threads(threads)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", model, ct, labels, "--label-mapping", mapping, "--device", "cpu", "--json"])
    if code != 0:
        raise RuntimeError(f"maskmed evaluate {model} exited {code}")
    report = json.loads(printed.getvalue())
    return {"mean": report["mean_dice"], "classes": {n: s["dice"] for n, s in report["classes"].items()}}


def compare(args: argparse.Namespace, workdir: Path) -> None:
    refined = args.refined
    if refined is None:
        refined = str(workdir / "refined_zero.maskmed")
        run_child(grow, args.baseline, refined, args.levels)
        print(f"refined model: {args.baseline} grown by {args.levels} zero-initialised stage(s) (same predictions)")
    rows = {}
    for name, model in (("baseline", args.baseline), ("refined", refined)):
        timing = measure(timed_prediction, model, args.ct, args.threads)
        scores = run_child(dice_per_class, model, args.ct, args.labels, args.mapping, args.threads)
        rows[name] = {**timing, **scores}
        print(f"{name:9s} {model}: masks at stage {timing['mask_level']}, {timing['seconds']:.1f} s "
              f"(CPU {timing['cpu_total']:.1f} s, others {timing['others']:.2f} cores), peak RSS "
              f"{timing['peak_rss'] / GIB:.2f} GiB, mean Dice {scores['mean']:.3f}")
    base, fine = rows["baseline"], rows["refined"]
    print(f"refined / baseline: time {fine['seconds'] / base['seconds']:.2f}x, peak RSS "
          f"{fine['peak_rss'] / base['peak_rss']:.2f}x, mean Dice {fine['mean'] - base['mean']:+.3f}")
    print(f"{'class':24s} {'baseline':>8s} {'refined':>8s} {'change':>7s}")
    for name in {**base["classes"], **fine["classes"]}:  # the model's class order
        before, after = base["classes"].get(name, 0.0), fine["classes"].get(name, 0.0)
        marker = "  (small)" if name in SMALL_CLASSES else ""
        print(f"{name:24s} {before:8.3f} {after:8.3f} {after - before:+7.3f}{marker}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=str(REPO / "maskmed_core" / "resources" / "default.maskmed"))
    parser.add_argument("--refined", help="a model file with refined masks (default: the baseline grown, untrained)")
    parser.add_argument("--levels", type=int, default=1, help="refinement stages to grow the baseline by (default 1)")
    parser.add_argument("--ct", default=str(DEFAULT_CT))
    parser.add_argument("--labels", default=str(DEFAULT_LABELS))
    parser.add_argument("--mapping", default=str(DEFAULT_MAPPING), help="label mapping of the reference")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--workdir", help="keep the grown model file here (default: a temporary folder)")
    args = parser.parse_args()
    print_machine()
    run_in_workdir(args.workdir, "maskmed-refine-", lambda workdir: compare(args, workdir))


if __name__ == "__main__":
    main()
