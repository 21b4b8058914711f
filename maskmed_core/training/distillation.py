"""Distillation for fine-tuning: the starting model teaches the classes a user's labels do not have.

A user who fine-tunes on a few labelled CTs labels the structure they care about, not the fifteen organs the model
already knows. Trained on those label maps as they are, every unlabelled organ is background, and the model is taught
to forget it. Instead, the starting model (the teacher) segments each of the user's images once, before training,
and its prediction of the classes the dataset does not label is written into the label map wherever the user's
labels say background (the user's own labels are never changed). Those classes then keep targets on the user's own
images for the whole fine-tune (hard pseudo-labels, the simplest form of Li & Hoiem's "learning without forgetting"
for segmentation), and the validation Dice of those classes measures agreement with the starting model: forgetting.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from maskmed_core.model import MaskMed
from maskmed_core.plans import Plans
from maskmed_core.training.cache_entries import PreprocessedCase, foreground_samples
from maskmed_core.training.validation import predict_case_indices


def teacher_to_student_classes(source_index: list[int | None], absent: list[int]) -> dict[int, int]:
    """Teacher class index (1..C_old) -> student class index (1..C_new) of each absent class.

    ``source_index``: per student class (0-based), its 0-based index in the teacher or None (ClassPlan.source_index);
    ``absent``: the 0-based student indices of the classes kept from the teacher that the data does not label.
    """
    mapping = {}
    for student in absent:
        teacher = source_index[student]
        if teacher is None:
            raise ValueError(f"absent class {student} has no class in the starting model")
        mapping[teacher + 1] = student + 1
    return mapping


def merge_teacher_labels(labels: np.ndarray, teacher_labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``labels`` (z, y, x) student indices, with ``teacher_labels`` (z, y, x, teacher indices) of the mapped classes
    written where ``labels`` is background (0). Returns a new uint8 array; the inputs are not changed."""
    if labels.shape != teacher_labels.shape:
        raise ValueError(f"teacher prediction {teacher_labels.shape} and labels {labels.shape} differ in shape")
    lookup = np.zeros(int(max(teacher_labels.max(initial=0), max(mapping, default=0))) + 1, dtype=np.uint8)
    for teacher, student in mapping.items():
        lookup[teacher] = student
    taught = lookup[teacher_labels]
    merged = np.array(labels, dtype=np.uint8, copy=True)
    fill = (merged == 0) & (taught > 0)
    merged[fill] = taught[fill]
    return merged


def distill_absent_classes(
    cases: list[PreprocessedCase],
    teacher: MaskMed,
    plans: Plans,
    mapping: dict[int, int],
    num_classes: int,
    device: torch.device,
    seed: int = 0,
) -> list[PreprocessedCase]:
    """The cases with the teacher's prediction of the absent classes merged into their labels (see the module).

    cases: preprocessed real cases on the model grid; a case without an image (label-only) is returned unchanged.
    mapping: :func:`teacher_to_student_classes`. num_classes: the student's class count C (labels are 0..C).
    The labels become in-memory arrays; the cache on disk is not changed.
    """
    if not mapping:
        return list(cases)
    teacher = teacher.to(device).eval()
    rng = np.random.default_rng(seed)
    taught = []
    for case in cases:
        if case.image is None:
            taught.append(case)
            continue
        teacher_labels = predict_case_indices(teacher, case.image, plans, device)
        labels = merge_teacher_labels(np.asarray(case.labels), teacher_labels, mapping)
        taught.append(replace(case, labels=labels, foreground=foreground_samples(labels, num_classes, rng)))
    return taught
