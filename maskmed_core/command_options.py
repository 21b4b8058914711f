"""Command-line options that several ``maskmed`` commands share, declared once (below the commands, which do not
import each other)."""

from __future__ import annotations

import argparse

from maskmed_core.devices import DEVICES


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` of the inference commands (``predict``, ``evaluate``, ``demo``)."""
    parser.add_argument("--device", default="auto", choices=DEVICES)


def add_largest_component_option(parser: argparse.ArgumentParser) -> None:
    """``--largest-component``, shared by ``predict`` and ``evaluate``."""
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only each class's largest connected piece (drops stray blobs of a class "
                        "elsewhere in the body)")
