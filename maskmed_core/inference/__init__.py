"""Inference: preprocessing, sliding window, the re-thresholdable result and the Predictor.

The names below are imported on first use (PEP 562), so that importing a submodule that needs neither SimpleITK nor
the Predictor (``inference.result``, ``inference.sliding_window``: training from a preprocessed cache on a machine
without SimpleITK) does not import them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maskmed_core.inference.predictor import Predictor, resolve_device
    from maskmed_core.inference.result import SegmentationResult
    from maskmed_core.inference.sliding_window import InferenceCancelled

_WHERE = {
    "Predictor": "maskmed_core.inference.predictor",
    "resolve_device": "maskmed_core.inference.predictor",
    "SegmentationResult": "maskmed_core.inference.result",
    "InferenceCancelled": "maskmed_core.inference.sliding_window",
}
__all__ = ["InferenceCancelled", "Predictor", "SegmentationResult", "resolve_device"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
