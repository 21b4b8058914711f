"""Thick-slice reconstruction simulated on a training patch: the image averaged along z over slabs, then interpolated
back to the patch's slices; the labels untouched.

A CT reconstructed with 5 to 7.5 mm slices and resampled to the model's spacing (3 mm for the default model) is blurred
along z only: each slice is the average of its slab (partial volume), and the resampling interpolates between slab
centres. In-plane it stays sharp. The augmentation's low-resolution step blurs all three axes at once and by nearest
down-sampling, so it does not teach that look; every restart of the default model measured lost most on s0009 made
7.5 mm thick (recipe README). Kept apart from the augmentation pipeline (which imports MONAI) so that the training
options can check a factor range without importing it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The slab thickness as a multiple of the patch's z spacing, drawn uniformly between these (`maskmed train
# --thick-slice-factor` overrides it): at the default model's 3 mm, 4.5 to 9 mm slices.
DEFAULT_THICK_SLICE_FACTOR = (1.5, 3.0)


def check_thick_slice_factor(factor: tuple[float, float]) -> None:
    """Raise ValueError unless 1 <= low <= high <= 16 (a slab is at least one slice and at most 16)."""
    low, high = factor
    if not 1.0 <= low <= high <= 16.0:
        raise ValueError(f"thick_slice_factor must be 1 <= LOW <= HIGH <= 16, got {low:g} {high:g}")


def draw_thick_slice_factor(rng: np.random.Generator, factor: tuple[float, float]) -> float:
    """One slab thickness, in slices of the patch, uniformly in ``factor`` (low, high)."""
    return float(rng.uniform(*factor))


def thicken_slices(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Image (C, z, y, x) float as if reconstructed with slices ``factor`` times thicker along z: the z axis averaged
    over ``round(z / factor)`` equal slabs (box profile), then linearly interpolated back to ``z`` slices. y and x are
    left as they are. Returns a new (C, z, y, x) tensor of the image's dtype; ``factor`` <= 1 returns a copy."""
    if image.dim() != 4:
        raise ValueError(f"image must be (C, z, y, x), got shape {tuple(image.shape)}")
    depth = image.shape[1]
    slabs = max(1, round(depth / factor))
    if factor <= 1.0 or slabs >= depth:
        return image.clone()
    batch = image.unsqueeze(0).float()
    averaged = F.adaptive_avg_pool3d(batch, (slabs, image.shape[2], image.shape[3]))
    back = F.interpolate(averaged, size=tuple(image.shape[1:]), mode="trilinear", align_corners=False)
    return back.squeeze(0).to(image.dtype)
