"""Fine-tuning from a model file: match classes by name, extend or shrink the class head, freeze parts.

Only the class head depends on the class list: the object queries, the mask path, the encoder and the
transformer are class-agnostic and are kept as they are (that is what the decoupled head buys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from maskmed_core.classes import SegmentClass
from maskmed_core.model import MaskMed


@dataclass
class ClassPlan:
    """The class list of the fine-tuned model and where each class's head rows come from."""

    classes: list[SegmentClass]
    source_index: list[int | None]  # per new class: its index in the old model, or None if new
    frozen: list[int]  # new-class indices kept from the old model but absent from the data


def plan_classes(
    old_classes: list[SegmentClass], data_names: list[str], new_classes: list[SegmentClass], keep_absent: bool
) -> ClassPlan:
    """Match the data's classes to the model's by name (case-insensitive).

    ``new_classes``: the dataset's classes (label values and names from its dataset.json). Classes of the
    old model absent from the data are kept (frozen) when ``keep_absent``, else dropped.
    """
    old_by_name = {c.name.lower(): i for i, c in enumerate(old_classes)}
    classes, sources, frozen = [], [], []
    for segment_class in new_classes:
        source = old_by_name.get(segment_class.name.lower())
        if source is not None:
            old = old_classes[source]
            # Keep the old colour and terminology: the data only says the name and label value.
            segment_class = SegmentClass(segment_class.label, old.name, old.color, old.terminology)
        classes.append(segment_class)
        sources.append(source)
    present = {name.lower() for name in data_names}
    if keep_absent:
        used_labels = {c.label for c in classes}
        for index, old in enumerate(old_classes):
            if old.name.lower() not in present:
                label = old.label if old.label not in used_labels else max(used_labels) + 1
                used_labels.add(label)
                frozen.append(len(classes))
                classes.append(SegmentClass(label, old.name, old.color, old.terminology))
                sources.append(index)
    return ClassPlan(classes=classes, source_index=sources, frozen=frozen)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], fresh: MaskMed, plan: ClassPlan
) -> dict[str, torch.Tensor]:
    """Old weights -> weights for ``fresh`` (built with the new class count): class rows copied by plan.

    Decoupled head: ``query_decoder.class_embed`` rows 0..C-1 are classes, row C is "no object".
    Conv head: ``seg_heads.*`` rows 0 is background, rows 1..C are classes. New classes keep the fresh
    model's random initialisation.
    """
    adapted = dict(state_dict)
    own = fresh.state_dict()
    for key, target in own.items():
        source = state_dict.get(key)
        if source is None or source.shape == target.shape and not _is_class_rows(key):
            continue
        if not _is_class_rows(key):
            raise ValueError(f"weight {key} has shape {tuple(source.shape)}, the new model needs {tuple(target.shape)}")
        rows = target.clone()
        offset = 1 if key.startswith("seg_heads.") else 0
        for new_index, old_index in enumerate(plan.source_index):
            if old_index is not None:
                rows[new_index + offset] = source[old_index + offset]
        if offset == 0:
            rows[-1] = source[-1]  # the no-object row
        else:
            rows[0] = source[0]  # the background row
        adapted[key] = rows
    return adapted


def _is_class_rows(key: str) -> bool:
    return key.startswith("query_decoder.class_embed.") or key.startswith("seg_heads.")


def freeze_class_rows(model: MaskMed, frozen: list[int]) -> None:
    """Zero the gradient of the head rows of ``frozen`` classes, so training does not move them."""
    if not frozen:
        return
    if model.decoupled:
        layers: list[nn.Module] = [model.query_decoder.class_embed]
        offset = 0
    else:
        layers = list(model.seg_heads)
        offset = 1
    rows = torch.tensor([i + offset for i in frozen])
    for layer in layers:
        for parameter in layer.parameters():
            parameter.register_hook(lambda grad, rows=rows: grad.index_fill(0, rows.to(grad.device), 0.0))


def load_encoder_weights(model: MaskMed, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy the ``encoder.*`` weights of ``state_dict`` into ``model``; everything else keeps its fresh init.

    The encoders must be the same (same plans and preset): a missing or differently shaped weight is an error.
    """
    own = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise ValueError(f"the model file has no encoder weight {missing[0]} ({len(missing)} missing)")
    for key, target in own.items():
        if state_dict[key].shape != target.shape:
            raise ValueError(f"encoder weight {key} has shape {tuple(state_dict[key].shape)}, the new model needs "
                             f"{tuple(target.shape)}")
    model.load_state_dict({k: state_dict[k] for k in own}, strict=False)


def freeze_encoder(model: MaskMed) -> None:
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
