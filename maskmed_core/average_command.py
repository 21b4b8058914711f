"""``maskmed average``: the weighted average of the weights of model files of one training lineage, as a new model file.

Averaging a fine-tuned file with the file it was fine-tuned from (WiSE-FT, weights 1 - a and a) keeps much of what
the fine-tuning gained and gives back some of what it lost elsewhere; averaging fine-tunes of one file (a model soup)
predicts like their ensemble at the cost of one network. The files must share the network, the preprocessing plans,
the classes and the mirror axes (fine-tuning from one file keeps them all); files trained apart do not average.
The output is written atomically: a failure or Ctrl+C leaves any earlier file of that name as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskmed_core.exit_codes import ExitCode, exit_codes_help, print_error, run_reporting

EXIT_CODES_HELP = exit_codes_help(ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.BAD_MODEL,
                                  ExitCode.CANCELLED)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="the model file to write (.maskmed)")
    parser.add_argument("models", nargs="+", metavar="model", help="two or more model files (.maskmed) to average")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="one positive weight per model file, in their order, scaled to sum to 1 (default: "
                        "equal weights); e.g. `--weights 0.5 0.5` for WiSE-FT halfway between a file and its "
                        "fine-tuned copy")


def run(args: argparse.Namespace) -> int:
    return run_reporting(lambda: _run(args), print_error, "interrupted; nothing was written")


def _run(args: argparse.Namespace) -> int:
    from maskmed_core.checkpoint import save_model_file
    from maskmed_core.io.output_folder import check_output_folder
    from maskmed_core.model_averaging import average_model_files, normalized_weights

    if len(args.models) < 2:
        print_error(f"give at least two model files to average (got {len(args.models)})")
        return ExitCode.USAGE
    try:
        weights = normalized_weights(args.weights, len(args.models))
    except ValueError as error:
        print_error(f"--weights: {error}")
        return ExitCode.USAGE
    output = Path(args.output)
    check_output_folder(output.parent).mkdir(parents=True, exist_ok=True)
    averaged = average_model_files(args.models, weights)
    save_model_file(output, averaged.build_model(), averaged.plans, averaged.classes, extra=averaged.extra)
    members = ", ".join(f"{Path(path).name} ({weight:.3g})" for path, weight in zip(args.models, weights, strict=True))
    print(f"wrote {output}: the average of {members}")
    return ExitCode.OK
