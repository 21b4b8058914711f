"""Validation by full sliding-window inference on preprocessed cases, with per-class Dice."""

from __future__ import annotations

import numpy as np
import torch

from maskmed_core.classes import SegmentClass
from maskmed_core.inference.result import stitched_class_probabilities
from maskmed_core.inference.sliding_window import sliding_window
from maskmed_core.model import MaskMed, labels_from_probabilities
from maskmed_core.model.semantic import DEFAULT_CLASS_THRESHOLD, DEFAULT_QUERY_THRESHOLD
from maskmed_core.plans import Plans


def dice_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of class indices 1..C present in the target or the prediction (absent from both: left out)."""
    scores = {}
    for c in range(1, num_classes + 1):
        p, t = prediction == c, target == c
        denominator = int(p.sum()) + int(t.sum())
        if denominator:
            scores[c] = 2.0 * int((p & t).sum()) / denominator
    return scores


@torch.no_grad()
def predict_case_indices(model: MaskMed, image: np.ndarray, plans: Plans, device: torch.device) -> np.ndarray:
    """Class indices (0..C) on the model grid for a preprocessed (z, y, x) image, default thresholds."""
    volume = np.asarray(image, dtype=np.float32)
    stitched = sliding_window(model, volume, plans.patch_size, plans.overlap, device=device)
    probabilities = stitched_class_probabilities(
        torch.from_numpy(stitched.masks), stitched.class_given_object, stitched.objectness, DEFAULT_QUERY_THRESHOLD
    )
    return labels_from_probabilities(probabilities[None], DEFAULT_CLASS_THRESHOLD)[0].numpy()


def validate(model: MaskMed, cases, plans: Plans, classes: list[SegmentClass], context) -> dict[str, float]:
    """Mean Dice per class name over ``cases`` (rank 0 only; other ranks return {})."""
    if not context.is_main:
        return {}
    model.eval()
    per_class: dict[int, list[float]] = {}
    for case in cases:
        prediction = predict_case_indices(model, case.image, plans, context.device)
        for c, score in dice_per_class(prediction, np.asarray(case.labels), len(classes)).items():
            per_class.setdefault(c, []).append(score)
    return {classes[c - 1].name: float(np.mean(scores)) for c, scores in sorted(per_class.items())}
