"""PyTorch reference of 3D multi-scale deformable attention.

This is the truth the compiled backends are tested against. It uses 5-D ``grid_sample`` (trilinear,
zero padding, ``align_corners=False``), so a sampling location of 0 or 1 lies on the outer face of a
level and voxel ``i`` has its centre at ``(i + 0.5) / size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn3d_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention over 3D feature levels.

    Args:
        value: (N, S, M, Dh); S = sum_l D_l*H_l*W_l, each level flattened in (d, h, w) C order.
        spatial_shapes: (L, 3) int64, (D_l, H_l, W_l) of each level.
        level_start_index: (L,) int64, offset of each level along S (unused here: implied by the shapes,
            kept so that every backend has one signature).
        sampling_locations: (N, Lq, M, L, P, 3) in [0, 1], last axis (x, y, z) = (w, h, d).
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M*Dh) in ``value``'s dtype: for every query and head, the attention-weighted sum of trilinearly
        sampled values. Mixed dtypes (a bfloat16/float16 ``value`` with float32 locations) are computed in the
        wider one, as the compiled backends accumulate half-precision values in float32.
    """
    del level_start_index
    output_dtype = value.dtype
    compute_dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype),
                                        attention_weights.dtype)
    value = value.to(compute_dtype)
    sampling_locations = sampling_locations.to(compute_dtype)
    attention_weights = attention_weights.to(compute_dtype)
    N, _, M, Dh = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(d) * int(h) * int(w) for d, h, w in spatial_shapes.tolist()]
    value_per_level = value.split(sizes, dim=1)
    # grid_sample wants coordinates in [-1, 1] with align_corners=False: -1 and 1 are the outer faces.
    grids = 2.0 * sampling_locations - 1.0
    sampled_per_level = []
    for level, (d, h, w) in enumerate(spatial_shapes.tolist()):
        # (N, S_l, M, Dh) -> (N*M, Dh, D_l, H_l, W_l)
        value_l = value_per_level[level].permute(0, 2, 3, 1).reshape(N * M, Dh, d, h, w)
        # (N, Lq, M, P, 3) -> (N*M, Lq, P, 1, 3)
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(N * M, Lq, P, 1, 3)
        # (N*M, Dh, Lq, P, 1)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled_per_level.append(sampled.squeeze(-1))
    # (N*M, Dh, Lq, L*P)
    sampled_all = torch.cat(sampled_per_level, dim=-1)
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    output = (sampled_all * weights).sum(-1)  # (N*M, Dh, Lq)
    return output.view(N, M * Dh, Lq).transpose(1, 2).contiguous().to(output_dtype)
