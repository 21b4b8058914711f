"""Point sampling of 3D masks (Mask2Former's training trick, in 3D).

Mask losses and matching costs are computed on a few thousand points per mask instead of every voxel,
so neither the full-resolution mask logits (Q x D x H x W) nor their gradient is ever materialised.
Points are normalised (x, y, z) = (w, h, d) in [0, 1], ``grid_sample`` convention with
``align_corners=False``: 0 and 1 are the outer faces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_points(volumes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinearly sample volumes at points.

    volumes: (B, C, D, H, W); points: (B, K, 3) or (B, T, K, 3) in [0, 1].
    Returns (B, C, K) or (B, C, T, K).
    """
    grid = 2.0 * points - 1.0
    if points.dim() == 3:
        grid = grid[:, None, None]  # (B, 1, 1, K, 3)
        return F.grid_sample(volumes, grid.to(volumes.dtype), mode="bilinear", align_corners=False)[:, :, 0, 0]
    grid = grid[:, None]  # (B, 1, T, K, 3)
    return F.grid_sample(volumes, grid.to(volumes.dtype), mode="bilinear", align_corners=False)[:, :, 0]


def mask_logits_at_points(
    mask_embed: torch.Tensor, mask_features: torch.Tensor, points: torch.Tensor, logits_first: bool = True
) -> torch.Tensor:
    """Mask logits of queries at points without materialising full-resolution masks.

    mask_embed: (Q, E); mask_features: (E, D, H, W); points: (K, 3) shared by all queries, or (Q, K, 3)
    one set per query. Returns (Q, K). Exact, because the logit is linear in the features.

    With one point set per query, ``logits_first`` computes each query's logit volume on the mask-feature grid
    ((Q, D, H, W), one matrix product) and samples that single channel, instead of sampling all E feature channels
    at every query's points and taking the dot product afterwards. Trilinear interpolation and the dot product are
    both linear, so the two give the same numbers (up to rounding), but the first samples E times less (E = 32 in
    ``small``: the point sampling was ~15 % of a CPU training step).
    ``logits_first=False`` is the reference step (``--reference-step``).
    """
    if points.dim() == 2:
        features = sample_points(mask_features[None], points[None])[0]  # (E, K)
        return mask_embed @ features
    if logits_first:
        volumes = torch.einsum("qe,edhw->qdhw", mask_embed, mask_features)  # (Q, D, H, W)
        return sample_points(volumes[:, None], points[:, None])[:, 0, 0]  # (Q, 1, 1, K) -> (Q, K)
    features = sample_points(mask_features[None], points[None])[0]  # (E, Q, K)
    return torch.einsum("qe,eqk->qk", mask_embed, features)


def mask_logits_on_grid(mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """Every query's mask logits on the whole mask-feature grid: (Q, E), (E, D, H, W) -> (Q, D*H*W)."""
    return torch.einsum("qe,edhw->qdhw", mask_embed, mask_features).flatten(1)


def masks_on_grid(masks: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Binary masks (T, D', H', W') as the share of each cell of a coarser (D, H, W) grid they cover:
    (T, D*H*W) float in [0, 1]. Area averaging, so a structure smaller than a cell still gives its cells a
    non-zero target (trilinear sampling at cell centres can miss it)."""
    if masks.shape[0] == 0:  # a patch of background only (interpolate refuses empty inputs)
        return masks.new_zeros((0, math.prod(size)), dtype=torch.float32)
    if tuple(masks.shape[1:]) == tuple(size):
        return masks.flatten(1).float()
    return F.interpolate(masks[None].float(), size=size, mode="area")[0].flatten(1)


@torch.no_grad()
def importance_points(
    logits_fn, num_masks: int, num_points: int, oversample_ratio: float, importance_ratio: float, device: torch.device
) -> torch.Tensor:
    """(num_masks, num_points, 3) points: the most uncertain (|logit| smallest) of an oversampled set,
    plus uniformly random ones. ``logits_fn(points (num_masks, K, 3)) -> (num_masks, K)``."""
    oversampled = max(num_points, int(num_points * oversample_ratio))
    candidates = torch.rand(num_masks, oversampled, 3, device=device)
    uncertainty = -logits_fn(candidates).abs()
    num_uncertain = int(importance_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, index[..., None].expand(-1, -1, 3))
    random_points = torch.rand(num_masks, num_points - num_uncertain, 3, device=device)
    return torch.cat((chosen, random_points), dim=1)
