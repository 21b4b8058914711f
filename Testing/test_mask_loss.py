"""The decoupled head's mask losses on the whole mask-feature grid (``mask_loss="grid"``, and ``"balanced"``: inside
and outside of each mask weighted alike) beside Mask2Former's sampled points: targets area-averaged onto the grid,
tiny structures seen, a confidently empty small mask pulled back, matching, and the training option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskmed_core.model.config import LossConfig
from maskmed_core.model.criterion import SetCriterion
from maskmed_core.model.matcher import hungarian_match
from maskmed_core.model.point_sampling import masks_on_grid
from maskmed_core.training.state import TrainingState, TrainingStateError, check_resumable


def test_masks_on_grid_is_each_cells_covered_share():
    masks = torch.zeros(2, 8, 8, 8)
    masks[0, :2, :2, :2] = 1  # exactly one 2x2x2 cell of the coarse grid
    masks[1, 0, 0, 0] = 1  # one voxel: an eighth of a cell, still a non-zero target
    grid = masks_on_grid(masks, (4, 4, 4))
    assert grid.shape == (2, 64)
    assert grid[0, 0] == 1.0 and grid[0, 1:].sum() == 0
    assert grid[1, 0] == pytest.approx(0.125) and grid[1, 1:].sum() == 0
    assert torch.equal(masks_on_grid(masks, (8, 8, 8)), masks.flatten(1))  # same grid: unchanged
    assert masks_on_grid(torch.zeros(0, 8, 8, 8), (4, 4, 4)).shape == (0, 64)  # background-only patch


def _outputs(tiny_found: bool) -> tuple[dict, torch.Tensor]:
    """Two queries on an 8 x 16 x 16 mask grid (labels at twice that): query 0 finds a large organ (class 0), query 1
    a 2 x 2 x 2-voxel structure (class 1) or, with ``tiny_found`` False, predicts an empty mask for it."""
    labels = torch.zeros(1, 16, 32, 32, dtype=torch.long)
    labels[0, 2:14, 4:28, 4:16] = 1
    labels[0, 6:8, 22:24, 22:24] = 2  # 8 voxels of 16384: about 2 of 4096 uniform points land on it
    features = torch.full((1, 2, 8, 16, 16), -1.0)
    features[0, 0, 1:7, 2:14, 2:8] = 1.0
    features[0, 1, 3, 11, 11] = 1.0
    mask_embed = torch.tensor([[[10.0, 0.0], [0.0, 10.0 if tiny_found else -10.0]]])
    class_logits = torch.tensor([[[8.0, -8.0, -8.0], [-8.0, 8.0, -8.0]]])
    outputs = {"pred_logits": class_logits, "pred_mask_embed": mask_embed, "mask_features": features,
               "aux_outputs": []}
    return outputs, labels


def test_grid_loss_sees_a_structure_that_sampled_points_mostly_miss():
    criterion = SetCriterion(2, LossConfig(deep_supervision=False, num_points=64), mask_loss="grid")
    found, labels = _outputs(tiny_found=True)
    missed, _ = _outputs(tiny_found=False)
    dice_found = criterion(found, labels)["loss_mask_dice"]
    dice_missed = criterion(missed, labels)["loss_mask_dice"]
    # Per mask, normalised by the 2 masks: missing the tiny one costs about half a Dice loss on the grid.
    assert float(dice_missed - dice_found) > 0.35
    # The missed mask gets a gradient towards the structure: its embedding's second channel must grow.
    missed["pred_mask_embed"].requires_grad_(True)
    criterion(missed, labels)["loss"].backward()
    assert missed["pred_mask_embed"].grad[0, 1, 1] < 0


def test_grid_loss_is_deterministic_and_point_loss_is_not():
    grid = SetCriterion(2, LossConfig(deep_supervision=False, num_points=64), mask_loss="grid")
    points = SetCriterion(2, LossConfig(deep_supervision=False, num_points=64), mask_loss="points")
    outputs, labels = _outputs(tiny_found=False)
    assert len({float(grid(outputs, labels)["loss"]) for _ in range(4)}) == 1
    assert len({float(points(outputs, labels)["loss"]) for _ in range(8)}) > 1


def test_grid_matching_assigns_the_tiny_structure_to_its_query():
    outputs, labels = _outputs(tiny_found=True)
    masks = torch.stack([(labels[0] == value).float() for value in (1, 2)])
    small_masks = masks_on_grid(masks, (8, 16, 16)).view(2, 8, 16, 16)
    # Classes swapped on purpose: only the masks can tell which query is which.
    class_logits = torch.zeros(2, 3)
    rows, cols = hungarian_match(class_logits, outputs["pred_mask_embed"][0], outputs["mask_features"][0],
                                 torch.tensor([0, 1]), small_masks, 64, 2.0, 5.0, 5.0, grid=True)
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 0, 1: 1}


def test_balanced_bce_pulls_a_confidently_empty_small_mask_back():
    """Query 1's mask is -10 everywhere (empty, saturated): the Dice gradient has vanished with the sigmoid's, and the
    mean BCE over all 2048 cells gives the structure's one cell 1/2048 of the weight; the balanced BCE half."""
    outputs, labels = _outputs(tiny_found=True)
    outputs["mask_features"][0, 1] = -10.0
    outputs["pred_mask_embed"][0, 1] = torch.tensor([0.0, 1.0])  # logits -10 on every cell
    gradients = {}
    for mask_loss in ("grid", "balanced"):
        criterion = SetCriterion(2, LossConfig(deep_supervision=False), mask_loss=mask_loss)
        features = outputs["mask_features"].clone().requires_grad_(True)
        criterion({**outputs, "mask_features": features}, labels)["loss"].backward()
        gradients[mask_loss] = float(features.grad[0, 1, 3, 11, 11])  # the structure's cell, channel 1
    # Raising channel 1 there raises query 1's logit in its structure: the loss must want that (negative gradient)...
    assert gradients["balanced"] < 0 and gradients["grid"] < 0
    # ...and the balanced BCE must want it hundreds of times more strongly.
    assert gradients["balanced"] / gradients["grid"] > 100


def test_balanced_bce_is_near_zero_for_a_right_mask_and_symmetric():
    criterion = SetCriterion(2, LossConfig(deep_supervision=False), mask_loss="balanced")
    outputs, labels = _outputs(tiny_found=True)
    outputs["pred_mask_embed"] = outputs["pred_mask_embed"] * 3  # confident, right masks
    assert float(criterion(outputs, labels)["loss_mask_bce"]) < 0.05
    assert len({float(criterion(outputs, labels)["loss"]) for _ in range(3)}) == 1


@pytest.mark.parametrize("mask_loss", ["grid", "balanced", "points"])
def test_refined_masks_are_matched_on_the_coarse_grid_and_only_the_last_layer_is_scored_on_the_fine_one(
        mask_loss, monkeypatch):
    from maskmed_core.model import criterion as criterion_module

    outputs, labels = _outputs(tiny_found=True)
    coarse = outputs["mask_features"]
    fine = torch.nn.functional.interpolate(coarse, scale_factor=2.0, mode="nearest")  # the labels' own grid
    outputs = {**outputs, "mask_features": fine, "coarse_mask_features": coarse,
               "aux_outputs": [{"pred_logits": outputs["pred_logits"], "pred_mask_embed": outputs["pred_mask_embed"]}]}
    matched, scored = [], []
    real_match, real_logits = criterion_module.hungarian_match, criterion_module.mask_logits_on_grid
    def match(*args, **kwargs):
        matched.append(tuple(args[2].shape[1:]))  # mask_features (E, D, H, W)
        return real_match(*args, **kwargs)

    def logits(embed, features):
        scored.append(tuple(features.shape[1:]))
        return real_logits(embed, features)

    monkeypatch.setattr(criterion_module, "hungarian_match", match)
    monkeypatch.setattr(criterion_module, "mask_logits_on_grid", logits)
    criterion = SetCriterion(2, LossConfig(num_points=64), mask_loss=mask_loss)
    assert torch.isfinite(criterion(outputs, labels)["loss"])
    if mask_loss == "points":  # sampled points cost the same on any grid: everything on the refined one
        assert matched == [(16, 32, 32)] * 2 and scored == []
    else:
        assert matched == [(8, 16, 16)] * 2  # last layer and the one earlier layer
        assert scored == [(16, 32, 32), (8, 16, 16)]


def test_unknown_mask_loss_is_refused():
    with pytest.raises(ValueError, match="mask_loss must be one of points, grid, balanced"):
        SetCriterion(2, LossConfig(), mask_loss="voxels")


def test_resuming_with_another_mask_loss_is_refused_and_old_states_read_as_points():
    model = torch.nn.Linear(2, 2)
    state = TrainingState(step=1, model=dict(model.state_dict()), optimizer={}, scheduler={},
                          torch_rng=torch.zeros(1, dtype=torch.uint8), run_config={"seed": 0})
    check_resumable(state, {"seed": 0, "mask_loss": "points"}, model, Path("state"))  # written before the option
    with pytest.raises(TrainingStateError, match="mask_loss: 'points' there, 'grid' now"):
        check_resumable(state, {"seed": 0, "mask_loss": "grid"}, model, Path("state"))
