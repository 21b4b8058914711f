"""Inference: preprocessing, sliding window, the re-thresholdable result and the Predictor."""

from maskmed_core.inference.predictor import Predictor, resolve_device
from maskmed_core.inference.result import SegmentationResult
from maskmed_core.inference.sliding_window import InferenceCancelled

__all__ = ["InferenceCancelled", "Predictor", "SegmentationResult", "resolve_device"]
