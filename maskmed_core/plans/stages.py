"""The network's stages planned for the data: strides and kernel sizes from the patch size and the voxel spacing.

Kept with the other planning (``maskmed_core.plans``) because it follows from the same two numbers the plans fix,
as nnU-Net's experiment planner derives its network topology from its plans.
"""

from __future__ import annotations

# A (z, y, x) triple of voxel counts, strides or kernel sizes.
Triple = tuple[int, int, int]


def plan_stages(
    patch_size: Triple, spacing: tuple[float, float, float], num_stages: int
) -> tuple[tuple[Triple, ...], tuple[Triple, ...]]:
    """nnU-Net-like strides and kernel sizes for a patch (voxels, (d, h, w)) and spacing (mm, (d, h, w)).

    An axis is pooled at a stage while its current spacing is at most twice the finest current spacing
    and it still has at least 8 voxels, so thick-slice CTs get in-plane-only pooling first; the kernel
    is 1 along an axis whose spacing is still more than twice the finest (no mixing of distant slices).
    """
    sizes = list(patch_size)
    current = list(spacing)
    strides: list[Triple] = [(1, 1, 1)]
    kernels: list[Triple] = [_kernel(current)]
    for _ in range(1, num_stages):
        finest = min(current)
        stride = _triple([2 if current[a] <= 2 * finest and sizes[a] >= 8 else 1 for a in range(3)])
        for a in range(3):
            sizes[a] //= stride[a]
            current[a] *= stride[a]
        strides.append(stride)
        kernels.append(_kernel(current))
    return tuple(strides), tuple(kernels)


def _kernel(spacing: list[float]) -> Triple:
    """3 along each axis, 1 along one whose spacing is more than twice the finest (no mixing of distant slices)."""
    finest = min(spacing)
    return _triple([1 if s > 2 * finest else 3 for s in spacing])


def _triple(values: list[int]) -> Triple:
    return values[0], values[1], values[2]
