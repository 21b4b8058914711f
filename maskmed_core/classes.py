"""Segment classes of a model: label value, name, colour and a standard (SNOMED CT) terminology entry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")


@dataclass(frozen=True)
class CodedTerm:
    """One code of a coding scheme, e.g. ("SCT", "10200004", "Liver")."""

    scheme: str
    code: str
    meaning: str

    def slicer(self) -> str:
        return f"{self.scheme}^{self.code}^{self.meaning}"


@dataclass(frozen=True)
class Terminology:
    """DICOM-style segment terminology: category, type and an optional type modifier (left/right)."""

    category: CodedTerm
    type: CodedTerm
    type_modifier: CodedTerm | None = None

    def slicer_tag(self, context: str = "Segmentation category and type - 3D Slicer General Anatomy list") -> str:
        """The string Slicer keeps in a segment's ``TerminologyEntry`` tag."""
        modifier = self.type_modifier.slicer() if self.type_modifier else "^^"
        return (
            f"{context}~{self.category.slicer()}~{self.type.slicer()}~{modifier}"
            "~Anatomic codes - DICOM master list~^^~^^"
        )


@dataclass(frozen=True)
class SegmentClass:
    """A class the model predicts. ``label`` is its value in label maps (1..65535; 0 is background)."""

    label: int
    name: str
    color: tuple[int, int, int]
    terminology: Terminology | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentClass:
        terminology = data.get("terminology")
        if terminology is not None:
            modifier = terminology.get("type_modifier")
            terminology = Terminology(
                category=CodedTerm(**terminology["category"]),
                type=CodedTerm(**terminology["type"]),
                type_modifier=CodedTerm(**modifier) if modifier else None,
            )
        return cls(
            label=int(data["label"]),
            name=str(data["name"]),
            # tuple[int, ...] is not the (r, g, b) triple mypy wants; validate_classes checks the length.
            color=tuple(int(c) for c in data["color"]),  # type: ignore[arg-type]
            terminology=terminology,
        )


def validate_classes(classes: list[SegmentClass]) -> None:
    """Labels must be distinct, in 1..65535, names distinct and non-empty, colours RGB bytes."""
    labels = [c.label for c in classes]
    names = [c.name for c in classes]
    if not classes:
        raise ValueError("a model needs at least one class")
    if len(set(labels)) != len(labels) or any(not 1 <= v <= 65535 for v in labels):
        raise ValueError(f"class label values must be distinct and in 1..65535, got {labels}")
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise ValueError(f"class names must be distinct and non-empty, got {names}")
    for c in classes:
        if len(c.color) != 3 or any(not 0 <= v <= 255 for v in c.color):
            raise ValueError(f"class {c.name!r}: colour must be three values in 0..255, got {c.color}")


def _anatomy(code: str, meaning: str, modifier: tuple[str, str, str] | None = None) -> Terminology:
    return Terminology(
        category=CodedTerm(*ANATOMICAL_STRUCTURE),
        type=CodedTerm("SCT", code, meaning),
        type_modifier=CodedTerm(*modifier) if modifier else None,
    )


# The 15 AMOS 2022 abdominal organ classes (label = AMOS id), with SNOMED CT codes and Slicer-like colours.
AMOS15_CLASSES: tuple[SegmentClass, ...] = (
    SegmentClass(1, "spleen", (157, 108, 162), _anatomy("78961009", "Spleen")),
    SegmentClass(2, "right kidney", (185, 102, 83), _anatomy("64033007", "Kidney", RIGHT)),
    SegmentClass(3, "left kidney", (185, 102, 83), _anatomy("64033007", "Kidney", LEFT)),
    SegmentClass(4, "gallbladder", (139, 150, 98), _anatomy("28231008", "Gallbladder")),
    SegmentClass(5, "esophagus", (211, 171, 143), _anatomy("32849002", "Esophagus")),
    SegmentClass(6, "liver", (221, 130, 101), _anatomy("10200004", "Liver")),
    SegmentClass(7, "stomach", (216, 132, 105), _anatomy("69695003", "Stomach")),
    SegmentClass(8, "aorta", (224, 97, 76), _anatomy("15825003", "Aorta")),
    SegmentClass(9, "inferior vena cava", (0, 151, 206), _anatomy("64131007", "Inferior vena cava")),
    SegmentClass(10, "pancreas", (249, 180, 111), _anatomy("15776009", "Pancreas")),
    SegmentClass(11, "right adrenal gland", (244, 214, 49), _anatomy("23451007", "Adrenal gland", RIGHT)),
    SegmentClass(12, "left adrenal gland", (244, 214, 49), _anatomy("23451007", "Adrenal gland", LEFT)),
    SegmentClass(13, "duodenum", (255, 253, 229), _anatomy("38848004", "Duodenum")),
    SegmentClass(14, "urinary bladder", (222, 154, 132), _anatomy("89837001", "Urinary bladder")),
    SegmentClass(15, "prostate/uterus", (230, 158, 140), _anatomy("41216001", "Prostate")),
)


def lateral_pairs(classes: list[SegmentClass]) -> list[tuple[int, int]]:
    """Index pairs of classes that are the left and right of one structure (same SNOMED type code)."""
    by_type: dict[str, dict[str, int]] = {}
    for index, segment_class in enumerate(classes):
        terminology = segment_class.terminology
        if terminology is None or terminology.type_modifier is None:
            continue
        side = terminology.type_modifier.code
        if side in (LEFT[1], RIGHT[1]):
            by_type.setdefault(terminology.type.code, {})[side] = index
    return [(sides[LEFT[1]], sides[RIGHT[1]]) for sides in by_type.values() if len(sides) == 2]
