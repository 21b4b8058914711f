"""The small-reconstruction-field-of-view cut of training patches: its size rule and the cut itself.

A CT reconstructed on a small field of view (a spine or kidney protocol: 150 to 250 mm) is smaller in-plane than a
patch at the model's spacing, so at inference the body ends at the image border and the sliding window pads the rest
with air; training CTs (350 to 500 mm) never look like that. The cut makes them look like it. Kept apart from the
augmentation pipeline (which imports MONAI) so that the training options can check a size without importing it.
"""

from __future__ import annotations

import numpy as np
import torch

# The kept rectangle's side as a fraction of the patch's y and x sides, drawn uniformly between these (the
# augmentation presets' range; `maskmed train --field-of-view-size` overrides it). A 107 mm field of view in a
# 288 mm patch is 0.37.
DEFAULT_FIELD_OF_VIEW_SIZE = (0.4, 1.0)


def check_field_of_view_size(size: tuple[float, float]) -> None:
    """Raise ValueError unless 0 < low <= high <= 1 (a side is a fraction of the patch's, and never empty)."""
    low, high = size
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"field_of_view_size must be 0 < LOW <= HIGH <= 1, got {low:g} {high:g}")


def field_of_view_box(
    rng: np.random.Generator, patch_yx: tuple[int, int], size: tuple[float, float]
) -> tuple[slice, slice]:
    """A random kept in-plane (y, x) rectangle: each side drawn in ``size`` (fractions of ``patch_yx``, voxels),
    placed anywhere it still overlaps the patch (it may reach past the patch on any side)."""
    sides = []
    for extent in patch_yx:
        side = max(1, round(rng.uniform(*size) * extent))
        start = int(rng.integers(-(side // 2), extent - side // 2 + 1))
        sides.append(slice(max(start, 0), start + side))  # start + side >= 1: the box overlaps the patch
    return sides[0], sides[1]


def cut_to_field_of_view(
    image: torch.Tensor, labels: torch.Tensor, box: tuple[slice, slice], air_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, z, y, x) and labels (z, y, x) with everything outside the in-plane ``box`` (y, x slices) set to
    ``air_value`` and background (0): what a scan reconstructed on that field of view, padded with air, shows."""
    inside = torch.zeros(labels.shape[1:], dtype=torch.bool)
    inside[box] = True
    image = torch.where(inside, image, torch.full_like(image, air_value))
    labels = torch.where(inside, labels, torch.zeros_like(labels))
    return image, labels
