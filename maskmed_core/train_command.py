"""``maskmed train``: train or fine-tune MaskMed on local labelled cases (CPU, one GPU, or several).

DATASET is an nnU-Net v2 raw folder (dataset.json, imagesTr/, labelsTr/), or a .json / .csv list of
image/label pairs. Writes to OUT: best.maskmed and last.maskmed (each usable by `maskmed predict`),
training_state.safetensors (for --resume), training_log.jsonl and training_curves.png.
Several GPUs or processes on this machine: `maskmed train --nproc K ...`; on several machines: `torchrun
--nnodes=N --node_rank=I --rdzv_endpoint=HOST:PORT --nproc_per_node=K -m maskmed_core.cli train ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from maskmed_core.events import EpochEvent, Event, MessageEvent, StepEvent, SummaryEvent, to_json
from maskmed_core.exit_codes import ExitCode, exit_codes_help, report_failure
from maskmed_core.interrupts import interruption, raise_if_interrupted, sigterm_as_keyboard_interrupt

# ExitCode (maskmed_core.exit_codes) is shared by every command. Here USAGE: an option refused (its value, or
# --resume with nothing or another run to continue); BAD_INPUT: the dataset check found problems
# (report printed) or an input cannot be read; CANCELLED: the last completed epoch's files are kept, --resume
# continues; DIVERGED: the loss became NaN or infinite, the last good files are kept.
EXIT_HELP = exit_codes_help()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig options (declared with their flags in ``maskmed_core.training.config``), and the command's
    own: --export, --nproc, --json."""
    from maskmed_core.training import options
    from maskmed_core.training.config import TrainConfig

    options.add_arguments(parser, TrainConfig)
    parser.add_argument("--export", help="also copy the best model file here when training ends (e.g. the bundled "
                        "default model maskmed_core/resources/default.maskmed)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="train with K DDP processes on this machine (one per GPU, or CPU processes with gloo)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout instead of a progress bar")


def _config_from_args(args: argparse.Namespace):
    from maskmed_core.training import options
    from maskmed_core.training.config import TrainConfig

    return options.from_arguments(TrainConfig, args)


class _Progress:
    def __init__(self, json_lines: bool, is_main: bool):
        self.json_lines = json_lines
        self.is_main = is_main

    def __call__(self, event: Event) -> None:
        raise_if_interrupted()  # a cancel whose KeyboardInterrupt was lost comes back here
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


def _cancelled(interrupt: KeyboardInterrupt) -> str:
    return (f"interrupted ({interruption(interrupt)}); the files of the last completed epoch are kept: add --resume "
            "to continue")


def run(args: argparse.Namespace) -> int:
    is_main = int(os.environ.get("RANK", "0")) == 0
    progress = _Progress(args.json, is_main)
    if args.nproc > 1:
        return _run_local_workers(args, progress)
    from maskmed_core.io.output_folder import check_output_files
    from maskmed_core.training.trainer import run_training

    try:
        config = _config_from_args(args)
        if is_main and args.export:  # a folder that cannot be written, or a folder in the file's place: refused
            # now, not after hours of training (OutputLocationError / OutputIsAFolderError)
            check_output_files(Path(args.export).parent, (Path(args.export).name,))
        with sigterm_as_keyboard_interrupt():  # a scheduler's stop or `kill` cancels as Ctrl+C does
            summary = run_training(config, progress)
    except KeyboardInterrupt as interrupt:
        progress.error(_cancelled(interrupt))
        return ExitCode.CANCELLED
    except Exception as error:  # its exit code by its type (maskmed_core.exit_codes); a bug is reported as one
        return report_failure(error, progress.error)
    if "manifest" in summary:  # --prepare-only
        if is_main:
            text = (f"prepared {summary['cases']} real and {summary['label_only_cases']} label-only cases"
                    f"{' and a held-out case' if summary['holdout'] else ''}: {summary['manifest']}")
            print(json.dumps({"event": SummaryEvent.KIND, **summary}) if args.json else text, flush=True)
        return ExitCode.OK
    if is_main and args.export:
        try:
            summary["exported"] = str(_export(Path(summary["best_model"]), Path(args.export)))
        except Exception as error:  # the run's own files are complete: say where they are
            progress.error(f"the training finished (best model: {summary['best_model']}), but it could not be "
                           f"copied to {args.export}; copy it by hand")
            return report_failure(error, progress.error)
    if is_main:
        if args.json:
            print(json.dumps({"event": SummaryEvent.KIND, **summary}), flush=True)
        else:
            lines = [f"best epoch {summary['best_epoch']} (mean Dice {summary['best_mean_dice']:.3f}):"]
            lines += [f"  {name:24s} {score:.3f}" for name, score in summary["dice"].items()]
            lines.append(f"model files: {summary['best_model']} (best), {summary['last_model']} (last)")
            if "averaged_model" in summary:
                lines.append(f"  and {summary['averaged_model']} (the weights averaged over the last "
                             f"{summary['averaged_epochs']} epochs' ends)")
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

    from maskmed_core.atomic import atomic_path

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return target


def _run_local_workers(args: argparse.Namespace, progress: _Progress) -> int:
    """--nproc K: K workers of this command on this machine (``training.local_workers``); the exit code is the
    first failing worker's. Ctrl+C or SIGTERM stops every worker (each cancels as one process does); rank 0 says what
    was kept, or this process does when rank 0 ended before it could."""
    from maskmed_core.training.local_workers import start_workers, stop_workers, wait_for_workers

    argv, skip = [], False
    for argument in args.raw_argv:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            argv.append(argument)
    workers: list[subprocess.Popen] = []
    try:
        with sigterm_as_keyboard_interrupt():
            start_workers(argv, args.nproc, workers)
            return wait_for_workers(workers)
    except KeyboardInterrupt as interrupt:
        stop_workers(workers)
        if not workers or workers[0].returncode != ExitCode.CANCELLED:
            progress.error(_cancelled(interrupt))
        return ExitCode.CANCELLED
