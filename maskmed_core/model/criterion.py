"""Training losses: Mask2Former-style set criterion (decoupled head) and Dice+CE (conv head baseline); each head
builds its own (``model.heads``).

Both take the network's output dict and an integer label map (B, D, H, W) at input resolution with 0 as
background and 1..C as the classes, and return a dict of scalar losses whose "loss" entry is optimised.

Partial labels: ``unannotated`` (B, C) bool marks, per image, the classes its label map does not annotate (a
rehearsal patch synthesised from a label map that knows the starting model's organs but not the class a fine-tune
adds). Their logits are left out of that image's class softmax (and out of its matching): a query that finds such a
structure there is neither taught that it is that class nor that it is nothing (the marginal form of partial-label
losses for segmentation, as in Shi et al. 2021, "Marginal loss and exclusion loss for partially supervised
multi-organ segmentation").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskmed_core.model.config import LossConfig
from maskmed_core.model.matcher import hungarian_match
from maskmed_core.model.point_sampling import (
    importance_points,
    mask_logits_at_points,
    mask_logits_on_grid,
    masks_on_grid,
    sample_points,
)

# Where the decoupled head's mask losses are taken (see SetCriterion).
MASK_LOSSES = ("points", "grid", "balanced")


def targets_from_label_map(label_map: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (class indices (T,) in 0..C-1, binary masks (T, D, H, W) float) of the classes present."""
    targets = []
    for labels in label_map:
        present = labels.unique()
        present = present[present > 0]
        masks = (labels[None] == present[:, None, None, None]).float()
        targets.append((present - 1, masks))
    return targets


def _dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over masks of 1 - soft Dice on points. (T, K), (T, K) -> scalar."""
    probabilities = logits.sigmoid()
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum()


def _mean_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over masks of the mean BCE over their points: (T, K), (T, K) -> scalar."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum()


def _balanced_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over masks of the mean BCE inside the mask and the mean BCE outside it, halved: (T, K), (T, K) in [0, 1]
    -> scalar. Inside and outside weigh the same whatever the mask's size (targets are soft: a cell counts as much
    inside as it is covered)."""
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    inside = (losses * targets).sum(-1) / targets.sum(-1).clamp_min(1e-6)
    outside = (losses * (1 - targets)).sum(-1) / (1 - targets).sum(-1).clamp_min(1e-6)
    return (0.5 * (inside + outside)).sum()


def _without_unannotated(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` with the entries where ``mask`` is True set to a large negative number (left out of the softmax,
    no gradient). Decoupled head: logits (B, Q, C + 1), mask (B, 1, C): the no-object column is never masked. Conv
    head: logits (B, C + 1, z, y, x), mask (B, C + 1, 1, 1, 1) with the background channel False."""
    if logits.dim() == 3:
        mask = F.pad(mask, (0, logits.shape[-1] - mask.shape[-1]))
    return logits.masked_fill(mask.to(logits.device), -1e4)


def _on_grid(targets: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, ...]) -> list:
    """Each image's (labels (T,), masks (T, D', H', W')) with the masks as their share of each cell of ``size``."""
    return [(labels, masks_on_grid(masks, size).view(len(labels), *size)) for labels, masks in targets]


class SetCriterion(nn.Module):
    """Hungarian-matched class, mask BCE and mask Dice losses on every decoder layer (deep supervision).

    Class loss: cross-entropy over all Q queries, unmatched ones targeting "no object" (weight
    ``no_object_weight``). Mask losses: on ``num_points`` importance-sampled points per matched mask
    (``mask_loss="points"``, Mask2Former's), or on every cell of the mask-feature grid (``"grid"``), normalised by
    the number of ground-truth masks in the batch.

    Why a grid option: a structure of a few hundred voxels in a 64 x 96 x 96 patch (an adrenal gland at 3 mm) gets
    about one of the 4096 points, and none of the uncertain ones once its mask is confidently empty; its mask then
    never learns (the class still does, from the matching). On the grid every cell counts, and the mask-feature grid
    of the ``small`` preset (half resolution) is small enough that the whole (T, D, H, W) logit volume costs about
    what sampling it does. ``"balanced"``: the grid, with each mask's BCE the mean of its inside and its outside
    means. Why: once a small mask's logits are far below zero the Dice loss's gradient vanishes with the sigmoid's,
    and a BCE averaged over all 73 728 cells gives its 20 cells 1/3600 of the weight, so it stays empty (measured on
    the adrenal glands: matched queries of class confidence 1.00 with logits of -10 inside, -30 outside).
    """

    def __init__(self, num_classes: int, config: LossConfig, logits_first: bool = True, mask_loss: str = "points"):
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {', '.join(MASK_LOSSES)}; got {mask_loss!r}")
        self.num_classes = num_classes
        self.config = config
        self.mask_loss = mask_loss
        # How mask logits are sampled at each mask's points (see ``mask_logits_at_points``): same numbers, the
        # default samples 32x less. False keeps the reference step (--reference-step), for the training benchmark's
        # side-by-side.
        self.logits_first = logits_first
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = config.no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)
        # Fine-tuning (``reserve_queries``): (Q,) queries that hold the starting model's classes, (C,) new classes.
        self.held_queries: torch.Tensor | None = None
        self.new_classes: torch.Tensor | None = None

    def reserve_queries(self, held_queries: torch.Tensor, new_classes: list[int]) -> None:
        """Match the ``new_classes`` (0-based) only to queries outside ``held_queries`` ((Q,) bool).

        Why: Hungarian matching gives a new class the query whose mask is nearest its target, often one that holds
        one of the starting model's classes (the iliopsoas muscles lie beside the kidneys, the aorta, the spleen);
        that query then learns the new class and the old one is lost on every image (measured: spleen Dice 0.83 ->
        0.00 on the held-out CT). A free query has no class to lose.
        """
        is_new = torch.zeros(self.num_classes, dtype=torch.bool)
        is_new[new_classes] = True
        self.held_queries, self.new_classes = held_queries.bool().cpu(), is_new

    def _forbidden_pairs(self, labels: torch.Tensor) -> torch.Tensor | None:
        """(Q, T) bool: a held query paired with a new-class target (see ``reserve_queries``), or None."""
        if self.held_queries is None or self.new_classes is None:
            return None
        return self.held_queries[:, None] & self.new_classes[labels.cpu()][None, :]

    def _layer_losses(
        self,
        class_logits: torch.Tensor,
        mask_embed: torch.Tensor,
        mask_features: torch.Tensor,
        targets: list[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
        unannotated: torch.Tensor | None = None,
        loss_grid: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class loss, mask BCE, mask Dice) of one decoder layer, matched on ``mask_features`` and ``targets``;
        ``loss_grid``: other (mask features, targets) for the mask losses (the refined grid), else the same."""
        cfg = self.config
        loss_features, loss_targets = loss_grid or (mask_features, targets)
        if unannotated is not None:
            class_logits = _without_unannotated(class_logits, unannotated[:, None, :])
        batch, num_queries, _ = class_logits.shape
        no_object = self.num_classes
        target_classes = torch.full((batch, num_queries), no_object, dtype=torch.int64, device=class_logits.device)
        bce = class_logits.new_zeros(())
        dice = class_logits.new_zeros(())
        grid = self.mask_loss != "points"
        mask_bce = _balanced_bce_loss if self.mask_loss == "balanced" else _mean_bce_loss
        for b, (labels, masks) in enumerate(targets):
            rows, cols = hungarian_match(
                class_logits[b], mask_embed[b], mask_features[b], labels, masks, cfg.num_points,
                cfg.class_weight, cfg.mask_bce_weight, cfg.mask_dice_weight, grid=grid,
                forbidden=self._forbidden_pairs(labels),
            )
            if rows.numel() == 0:
                continue
            rows, cols = rows.to(class_logits.device), cols.to(class_logits.device)
            target_classes[b, rows] = labels[cols]
            embed, features, loss_masks = mask_embed[b, rows], loss_features[b], loss_targets[b][1]
            if grid:  # masks are already on the mask-feature grid (forward)
                mask_logits = mask_logits_on_grid(embed, features).float()  # (T, K = D*H*W)
                mask_targets = loss_masks[cols].flatten(1).float()
            else:
                points = importance_points(
                    lambda p, embed=embed, features=features: mask_logits_at_points(
                        embed, features, p, self.logits_first),
                    len(rows), cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio, features.device,
                )
                mask_logits = mask_logits_at_points(embed, features, points, self.logits_first).float()  # (T, K)
                mask_targets = sample_points(loss_masks[cols][:, None].to(features.dtype), points)[:, 0].float()
            bce = bce + mask_bce(mask_logits, mask_targets)
            dice = dice + _dice_loss(mask_logits, mask_targets)
        class_loss = F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight=self.class_weights)
        return class_loss, bce / num_masks, dice / num_masks

    def forward(
        self, outputs: dict, label_map: torch.Tensor, unannotated: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        targets = targets_from_label_map(label_map)
        # Grid losses on refined masks (PixelDecoderConfig.mask_refine_levels): every cell of the finer grid costs, 8x
        # as many per stage for each of Q x T matching pairs and every decoder layer (measured: the criterion of a
        # batch of two 64 x 96 x 96 patches 0.8 s -> 7.2 s on one core). So the matching and the earlier layers'
        # losses take the grid before refinement, and only the last layer's mask losses the refined one.
        features = outputs["mask_features"]
        coarse = outputs.get("coarse_mask_features", features) if self.mask_loss != "points" else features
        fine_targets = coarse_targets = targets
        if self.mask_loss != "points":  # once for all decoder layers: each mask's share of every mask-feature cell
            fine_targets = _on_grid(targets, tuple(features.shape[2:]))
            coarse_targets = fine_targets if coarse is features else _on_grid(targets, tuple(coarse.shape[2:]))
        num_masks = float(sum(len(labels) for labels, _ in targets))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Normalise by the mean count over ranks: DDP then averages gradients into the global-batch loss.
            count = torch.tensor([num_masks], dtype=torch.float64, device=label_map.device)
            torch.distributed.all_reduce(count)
            num_masks = float(count.item()) / torch.distributed.get_world_size()
        num_masks = max(1.0, num_masks)
        layers = [{"pred_logits": outputs["pred_logits"], "pred_mask_embed": outputs["pred_mask_embed"]}]
        if self.config.deep_supervision:
            layers += outputs["aux_outputs"]
        cfg = self.config
        total = outputs["pred_logits"].new_zeros((), dtype=torch.float32)
        losses: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(layers):
            class_loss, bce, dice = self._layer_losses(
                layer["pred_logits"], layer["pred_mask_embed"], coarse, coarse_targets, num_masks, unannotated,
                (features, fine_targets) if index == 0 else None,
            )
            total = total + cfg.class_weight * class_loss + cfg.mask_bce_weight * bce + cfg.mask_dice_weight * dice
            if index == 0:
                losses.update(loss_class=class_loss.detach(), loss_mask_bce=bce.detach(), loss_mask_dice=dice.detach())
        losses["loss"] = total
        return losses


class DiceCELoss(nn.Module):
    """nnU-Net's loss for the point-wise conv head: soft Dice over foreground classes + cross-entropy,
    with deep supervision weights 1, 1/2, 1/4, ... (normalised) on lower-resolution decoder outputs."""

    def __init__(self, num_classes: int, deep_supervision: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision

    def _single(
        self, logits: torch.Tensor, label_map: torch.Tensor, unannotated: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if unannotated is not None:  # channel 0 is background, 1..C the classes
            logits = _without_unannotated(logits, F.pad(unannotated, (1, 0))[:, :, None, None, None])
        if tuple(label_map.shape[1:]) != tuple(logits.shape[2:]):
            label_map = F.interpolate(label_map[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
        ce = F.cross_entropy(logits.float(), label_map)
        probabilities = logits.float().softmax(1)[:, 1:]
        one_hot = F.one_hot(label_map, self.num_classes + 1).movedim(-1, 1)[:, 1:].float()
        axes = (0, 2, 3, 4)  # batch Dice, as nnU-Net's default
        intersection = (probabilities * one_hot).sum(axes)
        denominator = probabilities.sum(axes) + one_hot.sum(axes)
        dice = 1 - ((2 * intersection + 1e-5) / (denominator + 1e-5)).mean()
        return ce, dice

    def forward(
        self, outputs: dict, label_map: torch.Tensor, unannotated: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = [outputs["seg_logits"]]
        if self.deep_supervision:
            logits += list(outputs["aux_seg_logits"])
        weights = torch.tensor([0.5**i for i in range(len(logits))])
        weights = weights / weights.sum()
        total = logits[0].new_zeros((), dtype=torch.float32)
        losses: dict[str, torch.Tensor] = {}
        for index, (weight, level_logits) in enumerate(zip(weights.tolist(), logits, strict=True)):
            ce, dice = self._single(level_logits, label_map, unannotated)
            total = total + weight * (ce + dice)
            if index == 0:
                losses.update(loss_ce=ce.detach(), loss_dice=dice.detach())
        losses["loss"] = total
        return losses

