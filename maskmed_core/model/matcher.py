"""Hungarian matching of predicted queries to ground-truth masks (per image)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from maskmed_core.model.point_sampling import mask_logits_at_points, mask_logits_on_grid, masks_on_grid, sample_points


def pairwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target. (Q, K), (T, K) -> (Q, T)."""
    positive = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of every prediction against every target. (Q, K), (T, K) -> (Q, T)."""
    probabilities = logits.sigmoid()
    numerator = 2 * probabilities @ targets.T
    denominator = probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def hungarian_match(
    class_logits: torch.Tensor,
    mask_embed: torch.Tensor,
    mask_features: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor,
    num_points: int,
    class_weight: float,
    mask_bce_weight: float,
    mask_dice_weight: float,
    grid: bool = False,
    forbidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment for one image (scipy's ``linear_sum_assignment``).

    class_logits (Q, C+1); mask_embed (Q, E); mask_features (E, D, H, W); target_labels (T,) in 0..C-1;
    target_masks (T, D', H', W') float in {0, 1} (any resolution: both are sampled at the same
    normalised points). ``grid``: the mask costs on every cell of the mask-feature grid instead of on
    ``num_points`` random points (the targets are then area-averaged onto that grid). Returns (query indices,
    target indices), each (min(Q, T),) int64. ``forbidden`` (Q, T) bool: pairs given a prohibitive cost, taken only
    where no allowed assignment exists.
    """
    if target_labels.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty
    if grid:
        logits = mask_logits_on_grid(mask_embed, mask_features).float()  # (Q, K = D*H*W)
        targets = masks_on_grid(target_masks, tuple(mask_features.shape[1:]))  # (T, K)
    else:
        points = torch.rand(num_points, 3, device=mask_features.device)
        logits = mask_logits_at_points(mask_embed, mask_features, points).float()  # (Q, K)
        targets = sample_points(target_masks[None].to(mask_features.dtype), points[None])[0].float()  # (T, K)
    cost_class = -class_logits.float().softmax(-1)[:, target_labels]
    cost = (
        class_weight * cost_class
        + mask_bce_weight * pairwise_bce(logits, targets)
        + mask_dice_weight * pairwise_dice(logits, targets)
    )
    cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)
    if forbidden is not None:
        cost = cost.masked_fill(forbidden.to(cost.device), 1e6)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(np.asarray(rows), dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)
