"""Fine-tuning from a model file: match classes by name, extend or shrink the class head, freeze parts.

Only the class head depends on the class list: the object queries, the mask path, the encoder and the
transformer are class-agnostic and are kept as they are (that is what the decoupled head buys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskmed_core.checkpoint import ModelFileError
from maskmed_core.classes import SegmentClass
from maskmed_core.model import MaskMed, ModelConfig

# What a fine-tune does with the starting model's classes that its data does not label (TrainConfig.absent_classes).
ABSENT_CLASSES = ("distill", "freeze", "drop")


@dataclass
class ClassPlan:
    """The class list of the fine-tuned model and where each class's head rows come from."""

    classes: list[SegmentClass]
    source_index: list[int | None]  # per new class: its index in the old model, or None if new
    frozen: list[int]  # new-class indices kept from the old model but absent from the data (the "absent" classes)


def plan_classes(
    old_classes: list[SegmentClass], data_names: list[str], new_classes: list[SegmentClass], keep_absent: bool
) -> ClassPlan:
    """Match the data's classes to the model's by name, ignoring case, spaces, '_' and '-' ("Left_Kidney" is the
    model's "left kidney").

    ``new_classes``: the dataset's classes (label values and names from its dataset.json). Classes of the
    old model absent from the data are kept when ``keep_absent``, else dropped. Two data classes whose names differ
    only in case or spacing are refused (ValueError): they would be two classes a user cannot tell apart.
    """
    old_by_name = {class_key(c.name): i for i, c in enumerate(old_classes)}
    seen: dict[str, str] = {}
    for segment_class in new_classes:
        other = seen.setdefault(class_key(segment_class.name), segment_class.name)
        if other != segment_class.name:
            raise ValueError(f"the dataset names two classes {other!r} and {segment_class.name!r}, which differ only "
                             "in case or spacing: give them distinct names, or one label value")
    classes, sources, frozen = [], [], []
    for segment_class in new_classes:
        source = old_by_name.get(class_key(segment_class.name))
        if source is not None:
            old = old_classes[source]
            # Keep the old colour and terminology: the data only says the name and label value.
            segment_class = SegmentClass(segment_class.label, old.name, old.color, old.terminology)
        classes.append(segment_class)
        sources.append(source)
    present = {class_key(name) for name in data_names}
    if keep_absent:
        used_labels = {c.label for c in classes}
        for index, old in enumerate(old_classes):
            if class_key(old.name) not in present:
                label = old.label if old.label not in used_labels else max(used_labels) + 1
                used_labels.add(label)
                frozen.append(len(classes))
                classes.append(SegmentClass(label, old.name, old.color, old.terminology))
                sources.append(index)
    return ClassPlan(classes=classes, source_index=sources, frozen=frozen)


def class_key(name: str) -> str:
    """The form in which two class names are the same class: lower case, '_' and '-' as spaces, single spaces."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], fresh: MaskMed, plan: ClassPlan
) -> dict[str, torch.Tensor]:
    """Old weights -> weights for ``fresh`` (built with the new class count): class rows copied by plan.

    The head says where its class rows are (``Head.class_row_prefixes``, ``class_row_offset``, ``extra_row``):
    decoupled: ``query_decoder.class_embed`` rows 0..C-1 are classes, row C is "no object"; conv: ``seg_heads.*``
    row 0 is background, rows 1..C are classes. New classes keep the fresh model's random initialisation.
    """
    head = fresh.head
    adapted = dict(state_dict)
    own = fresh.state_dict()
    for key, target in own.items():
        source = state_dict.get(key)
        class_rows = key.startswith(head.class_row_prefixes)
        if source is None or source.shape == target.shape and not class_rows:
            continue
        if not class_rows:
            raise ModelFileError(f"weight {key} has shape {tuple(source.shape)}, the new model needs "
                                 f"{tuple(target.shape)}")
        rows = target.clone()
        offset = head.class_row_offset
        for new_index, old_index in enumerate(plan.source_index):
            if old_index is not None:
                rows[new_index + offset] = source[old_index + offset]
        rows[head.extra_row] = source[head.extra_row]  # the no-object or background row
        adapted[key] = rows
    return adapted


def grown_weights(model: MaskMed, start_config: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of ``model`` that a network of ``start_config`` (the model file it starts from) does not have:
    the parts a training option added (``--mask-refine-levels``: finer decoder stages and their zero-initialised
    projections), kept at their fresh initialisation. Nothing else: a weight missing from a file whose own
    architecture has it is still refused by the strict load."""
    with torch.device("meta"):  # only the key names are needed: nothing is allocated
        start_keys = set(MaskMed(start_config).state_dict())
    return {key: value for key, value in model.state_dict().items() if key not in start_keys}


def freeze_class_rows(model: MaskMed, frozen: list[int]) -> None:
    """Zero the gradient of the head rows of ``frozen`` classes, so training does not move them."""
    if not frozen:
        return
    rows = torch.tensor([i + model.head.class_row_offset for i in frozen])
    for layer in model.head.class_row_layers():
        for parameter in layer.parameters():
            parameter.register_hook(lambda grad, rows=rows: grad.index_fill(0, rows.to(grad.device), 0.0))


def load_encoder_weights(model: MaskMed, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy the ``encoder.*`` weights of ``state_dict`` into ``model``; everything else keeps its fresh init.

    The encoders must be the same (same plans and preset): a missing or differently shaped weight is refused
    (ModelFileError: the model file does not fit, exit code BAD_MODEL).
    """
    own = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise ModelFileError(f"the model file has no encoder weight {missing[0]} ({len(missing)} missing)")
    for key, target in own.items():
        if state_dict[key].shape != target.shape:
            raise ModelFileError(f"encoder weight {key} has shape {tuple(state_dict[key].shape)}, the new model needs "
                             f"{tuple(target.shape)}")
    model.load_state_dict({k: state_dict[k] for k in own}, strict=False)


def freeze_encoder(model: MaskMed) -> None:
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)


# A free query must already overlap the new structure this much (soft Dice) for its features to seed the class row.
MIN_IMPRINT_OVERLAP = 0.25


@torch.no_grad()
def imprint_new_class_rows(
    model: MaskMed,
    patches: list[tuple[torch.Tensor, torch.Tensor]],
    new_classes: list[int],
    min_overlap: float = MIN_IMPRINT_OVERLAP,
    free_queries_only: bool = True,
) -> dict[int, float]:
    """Initialise the class-head row of each new class from a shared query that already covers it, where one does.

    The decoupled head's queries are class-agnostic: a query the model calls "no object" may still have a mask that
    follows a structure it has no class for. For each new class, the free query (most probable class: no object)
    whose mask best overlaps the class in each patch (soft Dice on the mask-feature grid) is taken if it overlaps at
    least ``min_overlap``, and the new row becomes the mean of those queries' class-head inputs, scaled to the norm of
    the model's existing class rows, with their mean bias (weight imprinting, Qi et al. 2018). Queries that hold
    another class are never used: measured on the default model, the queries nearest the iliopsoas muscles were its
    aorta, right-kidney and duodenum queries (soft Dice <= 0.2), and a row imprinted from them made the fine-tuned
    model call the held-out CT's spleen "iliopsoas" (spleen Dice 0.83 -> 0.00). Without a covering free query the
    row keeps its fresh initialisation (small logits), which training then shapes.

    model: a decoupled MaskMed whose head already has the rows (``adapt_state_dict``). patches: (image (1, 1, z, y, x)
    on the model grid, class indices (z, y, x), 0..C) pairs, each holding at least one new class. new_classes: the
    0-based class indices to imprint. Returns class index -> the soft Dice of the queries used (mean over patches),
    for the classes imprinted.
    """
    if not model.head.shared_queries or not new_classes or not patches:
        return {}  # only shared queries can hold a structure they have no class for
    head = model.query_decoder.class_embed
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    features: dict[int, list[torch.Tensor]] = {c: [] for c in new_classes}
    overlaps: dict[int, list[float]] = {c: [] for c in new_classes}
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for image, labels in patches:
            image, labels = image.to(device), labels.to(device)
            captured.clear()
            outputs = model(image)
            query_features = captured[-1][0]  # (Q, d): the last layer's input to the class head
            masks = torch.einsum("qe,ezyx->qzyx", outputs["pred_mask_embed"][0], outputs["mask_features"][0]).sigmoid()
            no_object = outputs["pred_logits"].shape[-1] - 1
            free = outputs["pred_logits"][0].argmax(-1) == no_object  # (Q,)
            for c in new_classes:
                target = (labels == c + 1).float()[None, None]
                if not target.any():
                    continue
                target = torch.nn.functional.adaptive_avg_pool3d(target, masks.shape[1:])[0, 0]
                dice = 2 * (masks * target).flatten(1).sum(1) / (masks.flatten(1).sum(1) + target.sum() + 1e-6)
                if free_queries_only:
                    dice = torch.where(free, dice, torch.full_like(dice, -1.0))
                best = int(dice.argmax())
                if float(dice[best]) >= min_overlap:
                    features[c].append(query_features[best])
                    overlaps[c].append(float(dice[best]))
    finally:
        hook.remove()
        model.train(was_training)
    old_rows = [i for i in range(head.weight.shape[0] - 1) if i not in new_classes]
    if not old_rows:
        return {}
    scale = head.weight[old_rows].norm(dim=1).mean()
    bias = head.bias[old_rows].mean()
    imprinted = {}
    for c in new_classes:
        if features[c]:
            mean = torch.stack(features[c]).mean(0)
            head.weight[c] = mean / mean.norm().clamp_min(1e-6) * scale
            head.bias[c] = bias
            imprinted[c] = sum(overlaps[c]) / len(overlaps[c])
    return imprinted


@torch.no_grad()
def queries_holding_classes(
    model: MaskMed, patches: list[tuple[torch.Tensor, torch.Tensor]], exclude: list[int]
) -> torch.Tensor:
    """(Q,) bool: the object queries whose most probable class is one of the model's classes (not "no object", not
    one of ``exclude``, 0-based) in at least one patch: the queries a fine-tune must not hand to a new class
    (``SetCriterion.reserve_queries``). The decoupled head's queries keep their class from image to image (on the
    held-out CT each of the default model's 15 classes comes from the same query as on the training CTs), so a few
    patches of the user's images find them. patches: (image (1, 1, z, y, x), labels) pairs as for imprinting."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        held = torch.zeros(model.query_decoder.query_feat.num_embeddings, dtype=torch.bool)
        for image, _ in patches:
            logits = model(image.to(device))["pred_logits"][0].cpu()  # (Q, C+1)
            best = logits.argmax(-1)
            held |= (best != logits.shape[-1] - 1) & ~torch.isin(best, torch.tensor(exclude, dtype=best.dtype))
    finally:
        model.train(was_training)
    return held


def patches_around_classes(
    cases, class_indices: list[int], patch_size: tuple[int, int, int], per_class: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``per_class`` (image (1, 1, z, y, x), labels (z, y, x)) patches per class (0-based index), each centred on
    a random voxel of the class in a real case (``PreprocessedCase.foreground``), zero-padded where the case is
    smaller than the patch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    patches = []
    for c in class_indices:
        holders = [case for case in cases if case.image is not None and c + 1 in case.foreground]
        for k in range(min(per_class, 4 * len(holders))):
            case = holders[k % len(holders)]
            voxels = case.foreground[c + 1]
            center = voxels[rng.integers(len(voxels))]
            image = np.zeros(patch_size, dtype=np.float32)
            labels = np.zeros(patch_size, dtype=np.int64)
            source, target = [], []
            for axis, size in enumerate(patch_size):
                start = int(center[axis]) - size // 2
                low, high = max(0, start), min(case.image.shape[axis], start + size)
                source.append(slice(low, high))
                target.append(slice(low - start, high - start))
            image[tuple(target)] = case.image[tuple(source)]
            labels[tuple(target)] = case.labels[tuple(source)]
            patches.append((torch.from_numpy(image)[None, None], torch.from_numpy(labels)))
    return patches
