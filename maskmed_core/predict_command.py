"""``maskmed predict``: segment CT files, folders of them, and DICOM series folders.

Outputs go to the folder given by ``-o``: ``<case>.<format>`` for each input, plus
``<case>.maskmed-result`` with ``--save-result`` (the re-thresholdable result the Slicer module reads).
With ``--json`` every line on stdout is one JSON object (``maskmed_core.events``): progress, message and
output events, and finally a done event with the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from maskmed_core import bundled
from maskmed_core.command_options import add_device_option, add_largest_component_option
from maskmed_core.events import DoneEvent, Event, MessageEvent, OutputEvent, ProgressEvent, to_json
from maskmed_core.exit_codes import ExitCode, exit_code_for, exit_codes_help, report_failure
from maskmed_core.interrupts import interruption, raise_if_interrupted, sigterm_as_keyboard_interrupt

RESULT_SUFFIX = ".maskmed-result"
# What --format may ask for: the label-map files inference/writers.write_labels writes (by the file's suffix).
LABEL_FORMATS = ("nii.gz", "nrrd", "seg.nrrd")


# ExitCode (maskmed_core.exit_codes) is shared by every command; predict never diverges.
EXIT_CODES_HELP = exit_codes_help(*(code for code in ExitCode if code != ExitCode.DIVERGED))


class Reporter:
    """Progress and messages for humans (stderr, a progress bar) or machines (JSON lines on stdout)."""

    def __init__(self, json_lines: bool):
        self.json_lines = json_lines
        self._last_bar = ""

    def emit(self, event: Event) -> None:
        if self.json_lines:
            print(to_json(event), flush=True)

    def progress(self, case: str, stage: str, fraction: float) -> None:
        raise_if_interrupted()  # a cancel whose KeyboardInterrupt was lost comes back here
        if self.json_lines:
            self.emit(ProgressEvent(case, stage, round(fraction, 4)))
            return
        filled = int(fraction * 30)
        bar = f"\r{printable(case)}: [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}% {stage:10s}"
        if bar != self._last_bar:
            sys.stderr.write(bar)
            sys.stderr.flush()
            self._last_bar = bar

    def message(self, level: str, text: str) -> None:
        if self.json_lines:
            self.emit(MessageEvent(level, text))
        else:
            if self._last_bar:
                sys.stderr.write("\n")
                self._last_bar = ""
            print(f"maskmed: {level}: {printable(text)}", file=sys.stderr)


def printable(text: str) -> str:
    """``text`` with control characters (a newline or ESC in a file name) escaped, so that a name can neither fake a
    line of output nor send escape sequences to the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def case_name(path: Path) -> str:
    from maskmed_core.io.reading import VOLUME_SUFFIXES

    name = Path(os.path.abspath(path)).name  # "." or "dir/.." name the folder they stand for (links not followed)
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def collect_cases(inputs: list[str]) -> list[Path]:
    """Each input: an image file, a DICOM series folder, or a folder of image files (one case each)."""
    from maskmed_core.io.errors import InputError
    from maskmed_core.io.reading import VOLUME_SUFFIXES

    cases: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"input {path} does not exist: check the path")
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
            cases.extend(images if images else [path])  # no image files: treat it as a DICOM series folder
        else:
            cases.append(path)
    names = [case_name(c) for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several inputs would write the same output name ({', '.join(duplicates)}); rename them")
    return cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from maskmed_core.model.semantic import DEFAULT_CLASS_THRESHOLD, DEFAULT_QUERY_THRESHOLD

    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="CT files, folders of them, or DICOM folders")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    parser.add_argument("--model", help="model file (.maskmed); default: the bundled default model")
    add_device_option(parser)
    parser.add_argument("--query-threshold", type=float, default=DEFAULT_QUERY_THRESHOLD,
                        help="drop queries whose best class probability is below this (0..1)")
    parser.add_argument("--class-threshold", type=float, default=DEFAULT_CLASS_THRESHOLD,
                        help="voxels whose winning class probability is below this become background (0..1)")
    add_largest_component_option(parser)
    parser.add_argument("--format", default=LABEL_FORMATS[0], choices=LABEL_FORMATS)
    parser.add_argument("--tta", action="store_true", help="average over mirrored inputs (slower, steadier)")
    parser.add_argument("--save-result", action="store_true",
                        help=f"also write <case>{RESULT_SUFFIX}, re-thresholdable without the network")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write <case>_probabilities/<label>_<name>.nii.gz: each class's probability as uint8 "
                        "(0..255) on the input grid")
    parser.add_argument("--series-uid", help="DICOM folder with several series: the one to read")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout instead of a progress bar")


def run(args: argparse.Namespace) -> int:
    reporter = Reporter(args.json)
    # SIGTERM (a closed Slicer, `kill`, a job scheduler) is handled like Ctrl+C: the temporary file being written
    # is removed and only complete files stay under their final names.
    with sigterm_as_keyboard_interrupt():
        code = _run(args, reporter)
    reporter.emit(DoneEvent(int(code)))
    return int(code)


def _run(args: argparse.Namespace, reporter: Reporter) -> ExitCode:
    written: list[str] = []
    try:
        return _run_cases(args, reporter, written)
    except KeyboardInterrupt as interrupt:
        how = interruption(interrupt)
        done = f"the files written before it are complete: {', '.join(written)}" if written else "no file was written"
        reporter.message("error", f"interrupted ({how}); {done}; nothing else was left behind")
        return ExitCode.CANCELLED
    except Exception as error:  # a refused output folder, input, model file or device; anything else is a bug
        return report_failure(error, lambda text: reporter.message("error", text))


def _run_cases(args: argparse.Namespace, reporter: Reporter, written: list[str]) -> ExitCode:
    """Check the arguments, then segment each case; errors before the first case end the run (``_run`` maps them to
    their exit code), a case's bad input is reported and the next case goes on."""
    from maskmed_core.io.errors import InputError
    from maskmed_core.io.output_folder import check_output_folder

    for name in ("query_threshold", "class_threshold"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            reporter.message("error", f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
            return ExitCode.USAGE
    model_path = Path(args.model) if args.model else bundled.DEFAULT_MODEL
    if args.model is None and not model_path.is_file():
        reporter.message("error", "no default model is bundled with this maskmed_core yet: pass --model FILE "
                         "(a .maskmed file made by `maskmed train`)")
        return ExitCode.BAD_MODEL
    check_output_folder(args.output)  # before anything slow: a file given as -o, a read-only folder or file system
    cases = collect_cases(args.inputs)
    from maskmed_core.inference import Predictor

    predictor = Predictor.from_file(model_path, args.device)
    output_folder = Path(args.output)
    worst = ExitCode.OK
    for case in cases:
        try:
            _predict_case(predictor, case, output_folder, args, reporter, written)
        except InputError as error:  # its message already names the file
            reporter.message("error", str(error))
            worst = exit_code_for(error)
        except OSError as error:  # a folder in the way, or a write failed its check (full disk, quota)
            reporter.message("error", f"{case}: {error}; no file of this case was left under a final name")
            return exit_code_for(error)
    return worst


def _write_probabilities(result, query_threshold: float, folder: Path, files: list[str]) -> None:
    """One uint8 map per class (probability * 255, clipped), on the input grid; each path is appended to ``files``
    (inside the caller's output batch: put in place with the case's other files)."""
    import numpy as np

    from maskmed_core.io.writing import write_image

    folder.mkdir(parents=True, exist_ok=True)
    probabilities = result.class_probabilities(query_threshold).clamp_(0.0, 1.0).mul_(255.0).round_()
    for index, segment_class in enumerate(result.classes):
        array = probabilities[index].numpy().astype(np.uint8)
        safe_name = "".join(ch if ch.isalnum() else "_" for ch in segment_class.name)
        path = folder / f"{segment_class.label}_{safe_name}.nii.gz"
        files.append(str(write_image(result.to_input_grid(array), path)))


def _predict_case(
    predictor, case: Path, output_folder: Path, args: argparse.Namespace, reporter: Reporter, written: list[str]
) -> None:
    from maskmed_core.atomic import output_batch, refuse_a_folder_in_the_way
    from maskmed_core.inference.writers import write_labels
    from maskmed_core.io.dicom import several_series_warning
    from maskmed_core.io.errors import OutputLocationError

    name = case_name(case)
    probabilities_folder = output_folder / f"{name}_probabilities"
    if args.probabilities and probabilities_folder.is_symlink():  # it would write into whatever folder it points to
        raise OutputLocationError(f"{probabilities_folder} is a symbolic link: remove it or choose another -o; MaskMed "
                                  "writes the probability maps into a folder of its own")
    label_path = output_folder / f"{name}.{args.format}"
    result_path = output_folder / f"{name}{RESULT_SUFFIX}" if args.save_result else None
    for path in (label_path, result_path):
        if path is not None:
            refuse_a_folder_in_the_way(path)  # now, not after the inference
    start = time.perf_counter()
    result = predictor.predict(
        case,
        progress=lambda fraction, stage: reporter.progress(name, stage, fraction),
        tta=args.tta,
        series_uid=args.series_uid,
    )
    for warning in [several_series_warning(case, args.series_uid), *result.warnings]:
        if warning:
            reporter.message("warning", f"{case}: {warning}")
    reporter.progress(name, "writing", 1.0)
    label_image = result.label_map(args.query_threshold, args.class_threshold, args.largest_component)
    output_folder.mkdir(parents=True, exist_ok=True)  # only now: a refused input leaves no folder either
    files: list[str] = []
    new_folder = args.probabilities and not probabilities_folder.exists()
    try:
        # A case is all or nothing, and replaces a previous run's files only once all of its own are complete: each
        # file is written and checked under a temporary name, and they are put in place together at the end.
        with output_batch() as batch:
            files.append(str(write_labels(label_image, result.classes, label_path)))
            if result_path is not None:
                files.append(str(result.save(result_path)))
            if args.probabilities:
                _write_probabilities(result, args.query_threshold, probabilities_folder, files)
            batch.on_commit = lambda: written.extend(files)
    except BaseException:
        if new_folder and probabilities_folder.is_dir() and not any(probabilities_folder.iterdir()):
            probabilities_folder.rmdir()
        raise
    seconds = time.perf_counter() - start
    statistics = result.statistics(args.query_threshold, args.class_threshold, args.largest_component)
    reporter.emit(OutputEvent(name, files, round(seconds, 2), [asdict(s) for s in statistics]))
    if not args.json:
        reporter.message("info", f"{name}: {seconds:.1f} s -> {', '.join(files)}")
