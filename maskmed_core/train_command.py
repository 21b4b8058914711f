"""``maskmed train``: train or fine-tune MaskMed on local labelled cases (CPU, one GPU, or many via torchrun).

DATASET is an nnU-Net v2 raw folder (dataset.json, imagesTr/, labelsTr/), or a .json / .csv list of
image/label pairs. Writes to OUT: best.maskmed and last.maskmed (each usable by `maskmed predict`),
training_state.safetensors (for --resume), training_log.jsonl and training_curves.png.
Several GPUs or processes: `maskmed train --nproc K ...`, or `torchrun --nproc_per_node=K -m
maskmed_core.cli train ...` (add torchrun's --nnodes/--node_rank/--rdzv_endpoint for several machines).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from maskmed_core.events import (
    EpochEvent,
    Event,
    ExitCode,
    MessageEvent,
    StepEvent,
    SummaryEvent,
    exit_codes_help,
    to_json,
)

# ExitCode (maskmed_core.events) is shared with `maskmed predict`. Here BAD_INPUT: the dataset check found problems
# (report printed) or an input cannot be read; CANCELLED: the last completed epoch's files are kept, --resume
# continues; DIVERGED: the loss became NaN or infinite, the last good files are kept.
EXIT_HELP = exit_codes_help()


def read_label_mapping(path: str) -> dict[int, int]:
    """Source label value -> target value, from {"src": dst, ...}, or the shared AMOS file's
    {"classes": [{"amos_id": a, "totalseg_v2_id": t}, ...]} layout."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "classes" in data:
        return {int(c["totalseg_v2_id"]): int(c["amos_id"]) for c in data["classes"]}
    return {int(k): int(v) for k, v in data.items()}


def _default(name: str):
    """The default of a TrainConfig field: one place for each default (the dataclass), argparse reads it there."""
    from maskmed_core.training.trainer import TrainConfig

    return TrainConfig.__dataclass_fields__[name].default


def _choices(name: str) -> tuple[str, ...]:
    from maskmed_core.training.trainer import TrainConfig

    return TrainConfig.CHOICES[name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="nnU-Net v2 raw folder, or a .json/.csv list of image/label pairs")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--preset", default=_default("preset"), choices=_choices("preset"))
    parser.add_argument("--init", help="fine-tune from this model file (classes matched by name)")
    parser.add_argument("--label-mapping", help="JSON file mapping label values of the data to the dataset's")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="target spacing, mm")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch size, voxels")
    parser.add_argument("--epochs", type=int, default=_default("epochs"))
    parser.add_argument("--steps-per-epoch", type=int, default=_default("steps_per_epoch"))
    parser.add_argument("--batch-size", type=int, default=_default("batch_size"),
                        help="global batch (split over processes)")
    parser.add_argument("--learning-rate", type=float, default=_default("learning_rate"))
    parser.add_argument("--warmup-steps", type=int, default=_default("warmup_steps"), metavar="STEPS",
                        help="linear learning-rate warm-up (default: 50 steps, 10 with --init)")
    parser.add_argument("--val-every", type=int, default=_default("val_every"), help="validate every N epochs")
    parser.add_argument("--device", default=_default("device"), choices=_choices("device"))
    parser.add_argument("--workers", type=int, default=_default("num_workers"),
                        help="data-loading worker processes per rank")
    parser.add_argument("--seed", type=int, default=_default("seed"))
    parser.add_argument("--deterministic", action="store_true", help="bit-reproducible (CPU), slower")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/training_state.safetensors")
    parser.add_argument("--skip-bad-cases", action="store_true", help="train on the cases that pass the check")
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--absent-classes", default=_default("absent_classes"), choices=_choices("absent_classes"),
                        help="with --init, the model's classes that the data does not label: 'distill' (default) "
                        "keeps them, taught on your images by the starting model's own predictions; 'freeze' keeps "
                        "them untrained; 'drop' removes them from the new model")
    parser.add_argument("--rehearsal", type=float, default=_default("rehearsal"), metavar="SHARE",
                        help="with --init: share of patches synthesised from the label maps shipped with MaskMed, "
                        "labelled with the model's own classes, so it keeps seeing the organs it knew (0: off)")
    parser.add_argument("--augmentation", default=_default("augmentation"), choices=_choices("augmentation"))
    parser.add_argument("--mirror-axes", default=_default("mirror_axes"), metavar="AXES",
                        help="axes the augmentation mirrors along: letters of z, y, x or 'none' (default: zyx, "
                        "nnU-Net's, for a new model; --init's own axes for a fine-tune); recorded in the model file, "
                        "where --tta mirrors along these only")
    parser.add_argument("--mask-loss", default=_default("mask_loss"), choices=_choices("mask_loss"),
                        help="decoupled head: mask losses on Mask2Former's sampled points (default), on every cell "
                        "of the mask-feature grid, or 'balanced': the grid with each mask's inside and outside "
                        "weighted alike, which also learns structures of a few hundred voxels (adrenal glands)")
    parser.add_argument("--head", default=_default("head"), choices=_choices("head"),
                        help="decoupled (MaskMed, the default for a new model) or conv: the point-wise conv head "
                        "baseline (nnU-Net style); with --init the model file's head is kept")
    parser.add_argument("--init-encoder-only", action="store_true",
                        help="with --init: take only its preprocessing plans and encoder weights, and train a fresh "
                        "transformer, decoder and head (--head, --no-transformer): heads compared on one encoder")
    parser.add_argument("--no-transformer", action="store_true", help="ablation: remove the FSA transformer")
    parser.add_argument("--amp", default=_default("amp"), choices=_choices("amp"), help="autocast on CUDA")
    parser.add_argument("--cache-dir", help="preprocessed-case cache (default OUT/cache)")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="stop (validate and save) once this much training time has passed, even if steps remain; "
                        "the learning rate decays by whichever runs out first, steps or time")
    parser.add_argument("--export", help="also copy the best model file here when training ends (e.g. the bundled "
                        "default model maskmed_core/resources/default.maskmed)")
    parser.add_argument("--synthetic-labels", nargs="+", default=[], metavar="PATH",
                        help="label maps without images (files or folders), trained on through CT synthesised from "
                        "them; label values must be TotalSegmentator v2 ids (use --label-mapping for the classes)")
    parser.add_argument("--synthetic-ratio", type=float, default=_default("synthetic_ratio"),
                        help="share of patches drawn from the --synthetic-labels cases ")
    parser.add_argument("--synthetic-prob", type=float, default=_default("synthetic_prob"),
                        help="probability that a real case's patch is replaced by a CT synthesised from its own "
                        "label map (TotalSegmentator v2 ids)")
    parser.add_argument("--contrast-prob", type=float, default=_default("contrast_prob"),
                        help="probability that a real CT patch is shown in another contrast phase (enhancing "
                        "classes shifted by class; TotalSegmentator v2 label maps)")
    parser.add_argument("--holdout", nargs=2, metavar=("IMAGE", "LABELS"),
                        help="a held-out labelled case: preprocessed into the cache, never trained on, scored (Dice, "
                        "HD95 on the model grid) with the best model at the end (holdout_evaluation.json)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="check and preprocess the data into the cache (--cache-dir) with its manifest.json, then "
                        "stop; `maskmed train CACHE/manifest.json` later trains from the cache alone, without "
                        "SimpleITK or the images (e.g. on a bare GPU machine)")
    parser.add_argument("--reference-step", action="store_true",
                        help="the former, slower training step (for benchmarks; learns the same)")
    parser.add_argument("--nproc", type=int, default=1, help="start K processes through torchrun (DDP)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout instead of a progress bar")


def _config_from_args(args: argparse.Namespace):
    from maskmed_core.training.trainer import TrainConfig

    values = {
        "dataset": args.dataset, "output": args.output, "preset": args.preset, "init": args.init,
        "label_mapping": read_label_mapping(args.label_mapping) if args.label_mapping else None,
        "spacing": tuple(args.spacing) if args.spacing else None,
        "patch_size": tuple(args.patch_size) if args.patch_size else None,
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps, "val_every": args.val_every,
        "device": args.device,
        "num_workers": args.workers, "seed": args.seed, "deterministic": args.deterministic,
        "resume": args.resume, "skip_bad_cases": args.skip_bad_cases, "freeze_encoder": args.freeze_encoder,
        "absent_classes": args.absent_classes, "rehearsal": args.rehearsal, "augmentation": args.augmentation,
        "mirror_axes": "" if args.mirror_axes == "none" else args.mirror_axes,  # None: see TrainConfig
        "mask_loss": args.mask_loss, "head": args.head, "transformer": not args.no_transformer,
        "init_encoder_only": args.init_encoder_only, "amp": args.amp, "cache_dir": args.cache_dir,
        "time_limit_minutes": args.time_limit, "synthetic_labels": list(args.synthetic_labels),
        "synthetic_ratio": args.synthetic_ratio, "synthetic_prob": args.synthetic_prob,
        "contrast_prob": args.contrast_prob, "fast_step": not args.reference_step,
        "holdout": tuple(args.holdout) if args.holdout else None, "prepare_only": args.prepare_only,
    }
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


class _Progress:
    def __init__(self, json_lines: bool, is_main: bool):
        self.json_lines = json_lines
        self.is_main = is_main

    def __call__(self, event: Event) -> None:
        if not self.is_main:
            return
        if self.json_lines:
            print(to_json(event), flush=True)
            return
        if isinstance(event, StepEvent):
            eta = event.remaining if event.remaining is not None else (
                event.elapsed / max(1, event.step) * (event.total - event.step))
            clock = time.strftime("%H:%M:%S", time.gmtime(eta))
            sys.stderr.write(f"\rstep {event.step}/{event.total}  loss {event.loss:.4f}  ETA {clock}")
            sys.stderr.flush()
        elif isinstance(event, EpochEvent):
            dice = f"  mean Dice {event.mean_dice:.3f}" if event.mean_dice is not None else ""
            sys.stderr.write(f"\repoch {event.epoch}: loss {event.loss:.4f}{dice}{' ' * 20}\n")
        elif isinstance(event, MessageEvent):
            sys.stderr.write(f"\nmaskmed: {event.level}: {event.text}\n")

    def error(self, text: str) -> None:
        self(MessageEvent("error", text))


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        return _relaunch_with_torchrun(args)
    from maskmed_core.checkpoint import ModelFileError
    from maskmed_core.io.errors import InputError
    from maskmed_core.training.trainer import DivergedError, TrainingError, run_training

    is_main = int(os.environ.get("RANK", "0")) == 0
    progress = _Progress(args.json, is_main)
    try:
        config = _config_from_args(args)
        summary = run_training(config, progress)
    except ModelFileError as error:
        progress.error(str(error))
        return ExitCode.BAD_MODEL
    except DivergedError as error:
        progress.error(str(error))
        return ExitCode.DIVERGED
    except (TrainingError, InputError) as error:
        progress.error(str(error))
        return ExitCode.BAD_INPUT
    except (ValueError, OSError) as error:
        progress.error(str(error))
        return ExitCode.USAGE if isinstance(error, ValueError) else ExitCode.ERROR
    except KeyboardInterrupt:
        progress.error("interrupted; the files of the last completed epoch are kept: add --resume to continue")
        return ExitCode.CANCELLED
    if "manifest" in summary:  # --prepare-only
        if is_main:
            text = (f"prepared {summary['cases']} real and {summary['label_only_cases']} label-only cases"
                    f"{' and a held-out case' if summary['holdout'] else ''}: {summary['manifest']}")
            print(json.dumps({"event": SummaryEvent.KIND, **summary}) if args.json else text, flush=True)
        return ExitCode.OK
    if is_main and args.export:
        summary["exported"] = str(_export(Path(summary["best_model"]), Path(args.export)))
    if is_main:
        if args.json:
            print(json.dumps({"event": SummaryEvent.KIND, **summary}), flush=True)
        else:
            lines = [f"best epoch {summary['best_epoch']} (mean Dice {summary['best_mean_dice']:.3f}):"]
            lines += [f"  {name:24s} {score:.3f}" for name, score in summary["dice"].items()]
            lines.append(f"model files: {summary['best_model']} (best), {summary['last_model']} (last)")
            if "exported" in summary:
                lines.append(f"best model copied to {summary['exported']}")
            if "holdout" in summary:
                from maskmed_core.evaluation import format_scores

                lines.append(f"held-out case ({summary['holdout']['grid']}):")
                lines += format_scores(summary["holdout"]["classes"], list(summary["holdout"]["classes"]))
            print("\n".join(lines))
    return ExitCode.OK


def _export(source: Path, target: Path) -> Path:
    """Copy a model file atomically (temporary name in the target folder, then rename)."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    from maskmed_core.atomic import atomic_path

    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return target


def _relaunch_with_torchrun(args: argparse.Namespace) -> int:
    argv, skip = [], False
    for argument in args.raw_argv:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            argv.append(argument)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "maskmed_core.cli", *argv]
    return subprocess.call(command)
