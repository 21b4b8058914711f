"""The ``maskmed`` command line: ``info``, ``build-ops``, ``predict``, ``train``, ``evaluate``, ``average``, ``demo``.

Exit codes: ``maskmed_core.exit_codes.ExitCode``, the same for every command (2 also for arguments argparse refuses);
each command's ``--help`` lists those it uses.
"""

from __future__ import annotations

import argparse
import platform
import sys

from maskmed_core.exit_codes import ExitCode


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cmd_info(_: argparse.Namespace) -> int:
    import warnings

    import torch

    import maskmed_core
    from maskmed_core.ops.build import EXTENSION_SOURCES, built_library, cache_root, cuda_build_possible
    from maskmed_core.ops.dispatch import active_backend, available_backends

    print(f"maskmed_core {maskmed_core.__version__}  (Python {platform.python_version()}, {platform.platform()})")
    print(f"torch {torch.__version__}  (CUDA build: {torch.version.cuda or 'no'})")
    print(f"CPU: {_cpu_name()}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            print(f"CUDA device {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        print("CUDA devices: none")
    print(f"op cache: {cache_root()}")
    for kind in EXTENSION_SOURCES:
        path = built_library(kind)
        if path is not None:
            state = f"built ({path})"
        elif kind == "cuda" and not cuda_build_possible()[0]:
            state = f"not built: {cuda_build_possible()[1]}"
        else:
            state = "not built (run `maskmed build-ops`)"
        print(f"  {kind:4s} backend: {state}")
    print(f"usable backends: {', '.join(available_backends())}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the lines above already say what is not built
        cpu_active = active_backend("cpu")
        cuda_active = active_backend("cuda") if torch.cuda.is_available() else "n/a (no CUDA device)"
    print(f"active for CPU tensors: {cpu_active}")
    print(f"active for CUDA tensors: {cuda_active}")
    return ExitCode.OK


def _cmd_build_ops(args: argparse.Namespace) -> int:
    from maskmed_core.ops.build import BuildStatus, build_ops

    kinds = ("cpu",) if args.cpu_only else ("cpu", "cuda")
    reports = build_ops(kinds, verbose=args.verbose)
    failed = False
    for report in reports:
        print(f"{report.kind}: {report.message}" + (f" -> {report.path}" if report.path else ""))
        failed |= report.status is BuildStatus.FAILED
    if failed:
        print(
            "maskmed: a backend failed to build; MaskMed still runs with the PyTorch reference op "
            "(slower). Re-run with --verbose to see the compiler output.",
            file=sys.stderr,
        )
        return ExitCode.ERROR
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskmed", description="MaskMed 3D CT segmentation")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, devices and which deformable-attention backends are built")
    info.set_defaults(handler=_cmd_info)
    build = commands.add_parser("build-ops", help="compile the deformable-attention op (C++ CPU, and CUDA if possible)")
    build.add_argument("--cpu-only", action="store_true", help="do not try to build the CUDA backend")
    build.add_argument("--verbose", action="store_true", help="show the compiler output")
    build.set_defaults(handler=_cmd_build_ops)
    from maskmed_core import predict_command

    predict = commands.add_parser(
        "predict",
        help="segment CT volumes",
        description=predict_command.__doc__,
        epilog=predict_command.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict_command.add_arguments(predict)
    predict.set_defaults(handler=predict_command.run)
    from maskmed_core import train_command

    train = commands.add_parser(
        "train",
        help="train or fine-tune on local labelled cases",
        description=train_command.__doc__,
        epilog=train_command.EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_command.add_arguments(train)
    train.set_defaults(handler=train_command.run)
    from maskmed_core import demo_command

    demo = commands.add_parser("demo", help="segment the bundled real CT with the default model",
                               description=demo_command.__doc__, epilog=demo_command.EXIT_CODES_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    demo_command.add_arguments(demo)
    demo.set_defaults(handler=demo_command.run)
    from maskmed_core import evaluate_command

    evaluate = commands.add_parser("evaluate", help="score a model on a labelled CT (per-class Dice and HD95)",
                                   description=evaluate_command.__doc__, epilog=evaluate_command.EXIT_CODES_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate_command.add_arguments(evaluate)
    evaluate.set_defaults(handler=evaluate_command.run)
    from maskmed_core import average_command

    average = commands.add_parser("average", help="average the weights of model files of one training lineage",
                                  description=average_command.__doc__, epilog=average_command.EXIT_CODES_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    average_command.add_arguments(average)
    average.set_defaults(handler=average_command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.raw_argv = argv  # `train --nproc K` starts K workers with the same arguments
    return int(args.handler(args))


def program() -> None:
    """The ``maskmed`` program (and ``python -m maskmed_core.cli``): :func:`main`, with Ctrl+C and SIGTERM a clean
    cancel everywhere. Each command handles them while it works (its message says what was kept); one that comes
    outside that (while Python starts the command, or while it prints its last lines) ends the run with exit code
    CANCELLED and one line, not a traceback; once the exit code is decided, both are ignored until the process has
    exited, so a late signal cannot change it."""
    from maskmed_core.interrupts import hold_signals, interruption, sigterm_as_keyboard_interrupt_from_now

    sigterm_as_keyboard_interrupt_from_now()
    try:
        code = main()
        hold_signals()
    except KeyboardInterrupt as interrupt:
        hold_signals()
        print(f"maskmed: interrupted ({interruption(interrupt)})", file=sys.stderr, flush=True)
        code = ExitCode.CANCELLED
    sys.exit(code)


if __name__ == "__main__":
    program()
