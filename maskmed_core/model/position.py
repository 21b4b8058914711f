"""3D sine position encoding and token-centre reference points."""

from __future__ import annotations

import math

import torch


def sine_position_encoding_3d(
    shape: tuple[int, int, int], channels: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed sine/cosine encoding of normalised (z, y, x) voxel-centre positions.

    Returns (D*H*W, channels), tokens in (d, h, w) C order. Each axis gets ``2 * (channels // 6)``
    channels (sin and cos interleaved over geometric frequencies); leftover channels are zero.
    """
    per_axis = 2 * (channels // 6)
    if per_axis == 0:
        raise ValueError(f"need at least 6 channels for a 3D sine encoding, got {channels}")
    half = per_axis // 2
    frequencies = 10000.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half)
    parts = []
    for axis, size in enumerate(shape):
        coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 * math.pi
        angles = coords[:, None] / frequencies[None, :]  # (size, half)
        encoding = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # (size, per_axis)
        view = [1, 1, 1, per_axis]
        view[axis] = size
        parts.append(encoding.view(view).expand(*shape, per_axis))
    position = torch.cat(parts, dim=-1).reshape(-1, 3 * per_axis)
    if position.shape[1] < channels:
        position = torch.nn.functional.pad(position, (0, channels - position.shape[1]))
    return position.to(dtype)


def token_centres(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Normalised voxel centres ((i + 0.5) / size) as (D*H*W, 3) in (x, y, z) = (w, h, d) order."""
    d, h, w = shape
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in (d, h, w)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack((xx, yy, zz), dim=-1).reshape(-1, 3)
