"""The `small` MaskMed overfits one real 64^3 CT crop with 5 organs (mean Dice > 0.9) on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskmed_core.model import MaskMed, labels_from_probabilities, preset
from maskmed_core.model.heads import build_criterion

# TotalSegmentator v2 ids: spleen, kidney_right, kidney_left, liver, stomach.
ORGANS = (1, 2, 3, 5, 6)
MAX_STEPS = 60


def load_crop(demo_data):
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_data.ct)))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_data.labels)))
    crop = (slice(48, 112), slice(18, 82), slice(25, 89))  # upper abdomen, (z, y, x) array order
    intensities = (np.clip(image[crop].astype(np.float32), -200, 300) - 40.0) / 120.0
    target = np.zeros(intensities.shape, dtype=np.int64)
    for index, organ in enumerate(ORGANS, start=1):
        target[labels[crop] == organ] = index
    return torch.from_numpy(intensities)[None, None], torch.from_numpy(target)[None]


def mean_dice(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    scores = []
    for c in range(1, num_classes + 1):
        p, t = prediction == c, target == c
        scores.append(2 * (p & t).sum().item() / max(1, p.sum().item() + t.sum().item()))
    return float(np.mean(scores))


@pytest.mark.slow
def test_small_model_overfits_one_real_crop(demo_data):
    torch.manual_seed(0)
    image, target = load_crop(demo_data)
    assert all((target == c).any() for c in range(1, len(ORGANS) + 1)), "every organ must be in the crop"
    config = preset("small", num_classes=len(ORGANS))
    model = MaskMed(config)
    criterion = build_criterion(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    best = 0.0
    for step in range(1, MAX_STEPS + 1):
        model.train()
        losses = criterion(model(image), target)
        optimiser.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimiser.step()
        if step >= 20 and step % 5 == 0:
            model.eval()
            with torch.no_grad():
                prediction = labels_from_probabilities(model.head.class_probabilities(model(image), 0.25), 0.5)
            best = max(best, mean_dice(prediction, target, len(ORGANS)))
            if best > 0.9:
                break
    assert best > 0.9, f"mean Dice {best:.3f} after {MAX_STEPS} steps"
