"""Gaussian-weighted sliding-window inference that stitches the decoupled head's queries over a volume.

Each patch's queries are combined into volume-level queries, one per query slot (the Q learned object
queries are shared by every patch):

    M_q(x)  = sum_p w_p(x) * o_pq * sigmoid(mask_pq(x)) / sum_p w_p(x)    objectness-weighted mask
    r_q[c]  = sum_p m_pq * pi_pq[c] / o_pq / sum_p m_pq                    class given "object"
    o_q     = sum_p m_pq * o_pq / sum_p m_pq                               objectness

with pi_pq = softmax(class logits) (C + 1 columns), o_pq = 1 - pi_pq[no object], w_p the Gaussian
importance map of patch p and m_pq = sum_x w_p(x) * o_pq * sigmoid(mask_pq(x)) the query's mask mass
in that patch. For a single patch this is exactly MaskMed's semantic inference
(p_c(x) = sum_q pi_q[c] * sigmoid(mask_q(x)) = sum_q r_q[c] * M_q(x)); over many patches it assumes a
slot keeps its class across the patches where it fires, and makes the result re-thresholdable from Q
maps instead of Q x C. The conv head is stored the same way with one "query" per class (its softmax
map, r = identity, o = 1).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from maskmed_core.model import MaskMed

ProgressCallback = Callable[[float, str], None]


class InferenceCancelled(RuntimeError):
    """Raised when the cancel token is set; nothing has been written."""


@dataclass
class StitchedQueries:
    """Volume-level queries on the model grid: masks (Q, z, y, x) float32 in [0, 1], class_given_object
    (Q, C), objectness (Q,)."""

    masks: np.ndarray
    class_given_object: np.ndarray
    objectness: np.ndarray


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis so that windows of ``patch`` cover ``size`` with at least ``overlap``."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    actual = (size - patch) / (count - 1)
    return [int(round(i * actual)) for i in range(count)]


def gaussian_importance(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """nnU-Net's importance map: a Gaussian with sigma = patch/8, peak 1, floored to keep weights positive."""
    axes = []
    for size in patch:
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-3)
        axes.append(torch.exp(-(coords**2) / (2 * sigma**2)))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = weight / weight.max()
    return weight.clamp_min(1e-3)


def mirror_class_permutation(num_classes: int, lateral_pairs: list[tuple[int, int]]) -> list[int]:
    """Class index permutation for a left-right mirror (lateral pairs swapped, the rest kept)."""
    permutation = list(range(num_classes))
    for a, b in lateral_pairs:
        permutation[a], permutation[b] = b, a
    return permutation


def _with_tta(
    model: MaskMed,
    batch: torch.Tensor,
    patch: tuple[int, int, int],
    mirror_axes: tuple[int, ...],
    class_permutation: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average over all combinations of mirrors along ``mirror_axes`` (0 = z, 1 = y, 2 = x = left-right).

    Decoupled head: a query's identity is not kept by a mirror (the query that finds the object on the image's
    right finds, in the left-right mirror, what was on the left), so each mirrored pass's queries are first matched
    to the unmirrored pass's (:func:`match_queries`) and averaged with their partners, not by index.
    """
    pi_sum, mask_sum, count = None, None, 0
    for flips in itertools.chain.from_iterable(
        itertools.combinations(mirror_axes, k) for k in range(len(mirror_axes) + 1)
    ):
        dims = [2 + axis for axis in flips]
        flipped = batch.flip(dims) if dims else batch
        pi, masks = model.head.query_outputs(model(flipped), patch)
        if dims:
            masks = masks.flip(dims)
        if 2 in flips:
            # A left-right mirror turns a left kidney into a right one: swap lateral classes back.
            real = pi[..., :-1][..., class_permutation]
            pi = torch.cat((real, pi[..., -1:]), dim=-1)
            if not model.head.shared_queries:  # query i is class i
                masks = masks[:, class_permutation]
        if pi_sum is not None and mask_sum is not None and model.head.shared_queries:
            order = match_queries(pi_sum / count, mask_sum / count, pi, masks)
            pi = torch.take_along_dim(pi, order[..., None], dim=1)
            masks = torch.take_along_dim(masks, order.view(*order.shape, 1, 1, 1), dim=1)
        pi_sum = pi if pi_sum is None else pi_sum + pi
        mask_sum = masks if mask_sum is None else mask_sum + masks
        count += 1
    return pi_sum / count, mask_sum / count


def match_queries(
    reference_pi: torch.Tensor, reference_masks: torch.Tensor, pi: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """(B, Q) index: ``order[b, q]`` is the query of this pass to average with reference query ``q``.

    ``pi``: (B, Q, C + 1) class probabilities (no-object last); ``masks``: (B, Q, z, y, x) mask probabilities, both
    already mirrored back into the reference's frame. One-to-one assignment (scipy's ``linear_sum_assignment``)
    that maximises soft Dice of the masks plus agreement of the class probabilities (their dot product), so two
    empty "no object" queries pair up as readily as two that found the same organ.
    """
    from scipy.optimize import linear_sum_assignment

    # In float32 even under CUDA autocast: bf16 sums over a patch's voxels are coarse, and numpy has no bf16.
    with torch.autocast(pi.device.type, enabled=False):
        a, b = reference_masks.flatten(2).float(), masks.flatten(2).float()
        overlap = torch.einsum("bqn,bpn->bqp", a, b)
        sizes = a.sum(-1)[:, :, None] + b.sum(-1)[:, None, :]
        agreement = torch.einsum("bqc,bpc->bqp", reference_pi.float(), pi.float())
        cost = -(2 * overlap / sizes.clamp_min(1e-6) + agreement)
    orders = [torch.as_tensor(linear_sum_assignment(c.float().cpu().numpy())[1]) for c in cost]
    return torch.stack(orders).to(pi.device)


@torch.no_grad()
def sliding_window(
    model: MaskMed,
    volume: np.ndarray,
    patch: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    mirror_axes: tuple[int, ...] = (),
    lateral_pairs: list[tuple[int, int]] | None = None,
    pad_value: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> StitchedQueries:
    """Run ``model`` over a normalised (z, y, x) volume and stitch volume-level queries (module docstring).

    A volume smaller than the patch along an axis is padded there with ``pad_value`` (the normalised value of
    air) on both sides alike, so that it sits at the patch's centre, and the result is cropped back. Centred, as
    nnU-Net pads, because training patches are centred on foreground: a network that has learnt where organs
    lie in a patch misses them in a corner (a 177 mm field of view, padded at one end, lost most of the aorta).
    ``cancel()`` is polled before every batch of patches.
    """
    device = torch.device(device)
    model.eval()
    original = volume.shape
    padding = [(extra // 2, extra - extra // 2) for extra in (max(0, p - s) for p, s in zip(patch, original,
                                                                                          strict=True))]
    if any(before or after for before, after in padding):
        volume = np.pad(volume, padding, constant_values=pad_value)
    shape = volume.shape
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True))))
    importance = gaussian_importance(patch).to(device)
    num_classes = model.config.num_classes
    num_queries = model.head.num_queries
    permutation = mirror_class_permutation(num_classes, lateral_pairs or [])

    mask_acc = torch.zeros((num_queries, *shape), dtype=torch.float32)
    weight_acc = torch.zeros(shape, dtype=torch.float32)
    class_acc = torch.zeros((num_queries, num_classes), dtype=torch.float64)
    objectness_acc = torch.zeros(num_queries, dtype=torch.float64)
    mass_acc = torch.zeros(num_queries, dtype=torch.float64)
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if not volume.flags.writeable:  # a memory-mapped training case: torch wants a writable buffer
        volume = volume.copy()
    source = torch.from_numpy(volume)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    for first in range(0, len(starts), batch_size):
        if cancel is not None and cancel():
            raise InferenceCancelled("inference was cancelled")
        chunk = starts[first : first + batch_size]
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True)) for start in chunk]
        batch = torch.stack([source[s] for s in slices])[:, None].to(device)
        with autocast:
            pi, masks = _with_tta(model, batch, patch, mirror_axes, permutation)
        pi, masks = pi.float(), masks.float()
        objectness = 1.0 - pi[..., -1]  # (B, Q)
        weighted = masks * objectness[..., None, None, None] * importance  # (B, Q, *patch)
        mass = weighted.sum((2, 3, 4))  # (B, Q)
        class_given_object = pi[..., :-1] / objectness.clamp_min(1e-6)[..., None]
        for index, region in enumerate(slices):
            mask_acc[(slice(None), *region)] += weighted[index].cpu()
            weight_acc[region] += importance.cpu()
        class_acc += (mass[..., None] * class_given_object).sum(0).double().cpu()
        objectness_acc += (mass * objectness).sum(0).double().cpu()
        mass_acc += mass.sum(0).double().cpu()
        if progress is not None:
            progress(min(1.0, (first + len(chunk)) / len(starts)), "inference")

    mask_acc /= weight_acc
    crop = tuple(slice(before, before + s) for (before, _), s in zip(padding, original, strict=True))
    masks = mask_acc[(slice(None), *crop)].clamp_(0.0, 1.0).numpy()
    safe_mass = mass_acc.clamp_min(1e-12)[:, None]
    class_given_object = (class_acc / safe_mass).float().numpy()
    objectness = (objectness_acc / mass_acc.clamp_min(1e-12)).float().numpy()
    return StitchedQueries(masks=masks, class_given_object=class_given_object, objectness=objectness)
