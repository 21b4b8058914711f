"""Rehearsal for fine-tuning: CT synthesised from label maps that ship with the package, in the model's own classes.

A user fine-tunes on their own few CTs; the data the starting model learned from is not theirs to have. What ships
with the package is seven TotalSegmentator label maps (``resources/rehearsal``, CC BY 4.0; 3 mm, TotalSegmentator v2
ids). Mixed into a fine-tune as label-only cases (a CT is synthesised for each patch, as for ``--synthetic-labels``),
they keep showing the model the organs it knew, labelled with its own classes: each class whose name is one of the
15 AMOS organs gets its TotalSegmentator ids (``resources/demo/amos15_from_totalseg_v2.json``). Classes they do not
annotate (the class a user adds, or a model's classes outside those 15) are marked unannotated for those cases, so
the criterion leaves them out rather than teaching them as background (``maskmed_core.model.criterion``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from maskmed_core.classes import SegmentClass
from maskmed_core.training.finetune import class_key

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
REHEARSAL_DIR = RESOURCES / "rehearsal"
# The 15 AMOS organs and their TotalSegmentator v2 ids (the same file the demo reads).
AMOS_TOTALSEG_IDS = RESOURCES / "demo" / "amos15_from_totalseg_v2.json"


@dataclass(frozen=True)
class RehearsalSet:
    """The shipped label maps, the label mapping that gives them the model's classes, and what they do not label.

    label_mapping: TotalSegmentator v2 id -> the label value of the model's class (other ids become background).
    unannotated: 0-based indices of the classes these maps do not annotate.
    """

    files: list[Path]
    label_mapping: dict[int, int]
    unannotated: list[int]


def rehearsal_set(classes: list[SegmentClass]) -> RehearsalSet | None:
    """The rehearsal cases for a model of ``classes``, or None when the shipped maps annotate none of them."""
    data = json.loads(AMOS_TOTALSEG_IDS.read_text(encoding="utf-8"))
    totalseg_ids = {class_key(entry["name"]): int(entry["totalseg_v2_id"]) for entry in data["classes"]}
    mapping, unannotated = {}, []
    for index, segment_class in enumerate(classes):
        source = totalseg_ids.get(class_key(segment_class.name))
        if source is None:
            unannotated.append(index)
        else:
            mapping[source] = segment_class.label
    files = sorted(REHEARSAL_DIR.glob("*.nii.gz"))
    if not mapping or not files:
        return None
    return RehearsalSet(files, mapping, unannotated)
