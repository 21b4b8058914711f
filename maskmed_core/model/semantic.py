"""Semantic inference for the decoupled head, and the two confidence thresholds."""

from __future__ import annotations

import torch

# The defaults of the two confidence thresholds (``maskmed predict``, the result file, validation, the Slicer panel's
# sliders): a query counts when its best class probability reaches DEFAULT_QUERY_THRESHOLD, a voxel keeps its winning
# class when that class's probability reaches DEFAULT_CLASS_THRESHOLD.
DEFAULT_QUERY_THRESHOLD = 0.25
DEFAULT_CLASS_THRESHOLD = 0.5


def query_confidence(class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best real-class probability of each query and that class.

    class_logits (B, Q, C+1) -> (confidence (B, Q), class index (B, Q) in 0..C-1). The softmax is over
    all C+1 columns, so a query that mostly says "no object" has a low confidence for every class.
    """
    probabilities = class_logits.softmax(-1)[..., :-1]
    return probabilities.max(-1)


def semantic_probabilities_from_queries(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, query_threshold: float = 0.0
) -> torch.Tensor:
    """p_c(x) = sum over kept queries q of softmax(class_q)[c] * sigmoid(mask_q(x)), no-object dropped.

    Args:
        class_logits: (B, Q, C+1).
        mask_logits: (B, Q, D, H, W).
        query_threshold: the query confidence threshold: a query whose best real-class probability
            (``query_confidence``) is below it contributes nothing.

    Returns:
        (B, C, D, H, W), each value in [0, Q] (queries can agree on a class; in practice about [0, 1]).
    """
    probabilities = class_logits.softmax(-1)[..., :-1]
    confidence = probabilities.max(-1).values
    probabilities = probabilities * (confidence >= query_threshold).unsqueeze(-1).to(probabilities.dtype)
    return torch.einsum("bqc,bqdhw->bcdhw", probabilities, mask_logits.sigmoid())


def labels_from_probabilities(
    probabilities: torch.Tensor, class_threshold: float = DEFAULT_CLASS_THRESHOLD
) -> torch.Tensor:
    """Label map from per-class probabilities (B, C, D, H, W) -> (B, D, H, W) int64 in 0..C.

    A voxel takes 1 + the index of its winning class, or 0 (background) when the winning p_c is below
    ``class_threshold`` (the class confidence threshold).
    """
    best, index = probabilities.max(1)
    return torch.where(best >= class_threshold, index + 1, torch.zeros_like(index))
