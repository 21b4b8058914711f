"""Segment classes of a model: label value, name, colour and a standard (SNOMED CT) terminology entry."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")
# The two organs whose sides decide whether an image looks mirrored left-right (inference/laterality.py).
LIVER = ("SCT", "10200004", "Liver")
SPLEEN = ("SCT", "78961009", "Spleen")


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

    @classmethod
    def from_slicer_tag(cls, tag: str) -> Terminology | None:
        """The category, type and modifier of a segment's ``TerminologyEntry`` tag (the form ``slicer_tag`` writes:
        ``context~scheme^code^meaning~...~...``), or None when the tag has no category and type in that form."""

        def term(text: str) -> CodedTerm | None:
            fields = text.split("^")
            return CodedTerm(*fields[:3]) if len(fields) >= 3 and all(fields[:3]) else None

        parts = tag.split("~")
        if len(parts) < 4:
            return None
        category, kind = term(parts[1]), term(parts[2])
        if category is None or kind is None:
            return None
        return cls(category, kind, term(parts[3]))

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
    def from_dict(cls, data: Any, field: str = "class") -> SegmentClass:
        """Build from JSON data read from a file: every field is type-checked and every text checked (printable,
        bounded, no separators) before use; raises UntrustedValueError naming the field."""
        from maskmed_core.untrusted import UnknownFieldsError, UntrustedValueError, check_sequence

        if not isinstance(data, dict):
            raise UntrustedValueError(field, f"expected an object, got {type(data).__name__}")
        unknown = set(data) - {"label", "name", "color", "terminology"}
        if unknown:
            raise UnknownFieldsError(field, unknown)
        terminology = data.get("terminology")
        if terminology is not None:
            if not isinstance(terminology, dict):
                raise UntrustedValueError(f"{field}.terminology", "expected an object")
            modifier = terminology.get("type_modifier")
            terminology = Terminology(
                category=_coded_term(terminology.get("category"), f"{field}.terminology.category"),
                type=_coded_term(terminology.get("type"), f"{field}.terminology.type"),
                type_modifier=_coded_term(modifier, f"{field}.terminology.type_modifier") if modifier else None,
            )
        segment_class = cls(
            label=data.get("label"),  # type: ignore[arg-type]
            name=data.get("name"),  # type: ignore[arg-type]
            color=tuple(check_sequence(data.get("color"), f"{field}.color", 3, 3)),
            terminology=terminology,
        )
        check_class(segment_class, field)
        return segment_class


# Terminology text ends up inside Slicer's TerminologyEntry tag, where "~" separates the parts, "^" the fields
# of a code and "|" the tags: a stray one would shift every field after it.
TERMINOLOGY_SEPARATORS = "~^|"


def _coded_term(data: Any, field: str) -> CodedTerm:
    from maskmed_core.untrusted import UntrustedValueError

    if not isinstance(data, dict) or set(data) != {"scheme", "code", "meaning"}:
        raise UntrustedValueError(field, "expected an object with exactly scheme, code and meaning")
    return CodedTerm(data["scheme"], data["code"], data["meaning"])


def check_class(segment_class: SegmentClass, field: str = "class") -> None:
    """Types, ranges and text of one class (it may come from a file): label 1..65535, a printable name of at most
    64 characters, an RGB colour of bytes, printable terminology without Slicer's separators."""
    from maskmed_core.untrusted import MAX_NAME_LENGTH, check_int, check_text

    check_int(segment_class.label, f"{field}.label", 1, 65535)
    check_text(segment_class.name, f"{field}.name", MAX_NAME_LENGTH)
    for index, value in enumerate(segment_class.color):
        check_int(value, f"{field}.color[{index}]", 0, 255)
    terminology = segment_class.terminology
    if terminology is None:
        return
    for part in ("category", "type", "type_modifier"):
        term = getattr(terminology, part)
        if term is None:
            continue
        for name, length in (("scheme", 16), ("code", 64), ("meaning", 128)):
            check_text(getattr(term, name), f"{field}.terminology.{part}.{name}", length, TERMINOLOGY_SEPARATORS)


def validate_classes(classes: list[SegmentClass]) -> None:
    """Each class checked (``check_class``); labels and names distinct; at least one and at most 1000 classes."""
    from maskmed_core.untrusted import UntrustedValueError

    if not classes:
        raise ValueError("a model needs at least one class")
    if len(classes) > 1000:
        raise UntrustedValueError("classes", f"{len(classes)} classes, more than the 1000 allowed")
    for index, segment_class in enumerate(classes):
        check_class(segment_class, f"classes[{index}]")
    labels = [c.label for c in classes]
    names = [c.name for c in classes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"class label values must be distinct and in 1..65535, got {labels}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct and non-empty, got {names}")


def _anatomy(
    code: str | tuple[str, str, str], meaning: str = "", modifier: tuple[str, str, str] | None = None
) -> Terminology:
    """An anatomical structure: an SCT code and meaning, or a whole (scheme, code, meaning) such as ``LIVER``."""
    return Terminology(
        category=CodedTerm(*ANATOMICAL_STRUCTURE),
        type=CodedTerm(*code) if isinstance(code, tuple) else CodedTerm("SCT", code, meaning),
        type_modifier=CodedTerm(*modifier) if modifier else None,
    )


# The 15 AMOS 2022 abdominal organ classes (label = AMOS id), with SNOMED CT codes and Slicer-like colours.
AMOS15_CLASSES: tuple[SegmentClass, ...] = (
    SegmentClass(1, "spleen", (157, 108, 162), _anatomy(SPLEEN)),
    SegmentClass(2, "right kidney", (185, 102, 83), _anatomy("64033007", "Kidney", RIGHT)),
    SegmentClass(3, "left kidney", (185, 102, 83), _anatomy("64033007", "Kidney", LEFT)),
    SegmentClass(4, "gallbladder", (139, 150, 98), _anatomy("28231008", "Gallbladder")),
    SegmentClass(5, "esophagus", (211, 171, 143), _anatomy("32849002", "Esophagus")),
    SegmentClass(6, "liver", (221, 130, 101), _anatomy(LIVER)),
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
    """(left, right) index pairs of classes that are the two sides of one structure: the same SNOMED type with the
    left and right modifiers, or, for classes without a side in their terminology, names alike but for the word
    'left' / 'right' ("left iliopsoas" / "right iliopsoas", "kidney_left" / "kidney_right")."""
    return [(sides["left"][0], sides["right"][0]) for sides in _sides_by_structure(classes).values()
            if _one_of_each(sides)]


def lateral_classes_without_partner(classes: list[SegmentClass]) -> list[int]:
    """Indices of the classes that name one side of a structure (by terminology or name) but have no single partner
    of the other side: a left-right mirror would put such a class on the wrong side under its own name."""
    return sorted(index for sides in _sides_by_structure(classes).values() if not _one_of_each(sides)
                  for index in sides["left"] + sides["right"])


def _one_of_each(sides: dict[str, list[int]]) -> bool:
    return len(sides["left"]) == 1 and len(sides["right"]) == 1


def _sides_by_structure(classes: list[SegmentClass]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """Structure -> {"left": indices, "right": indices} of the classes that name a side: keyed by the SNOMED type
    code when the terminology has a left/right modifier, else by the name without its side word."""
    by_structure: dict[tuple[str, str], dict[str, list[int]]] = {}
    for index, segment_class in enumerate(classes):
        side_and_key = _terminology_side(segment_class.terminology) or _name_side(segment_class.name)
        if side_and_key is not None:
            side, key = side_and_key
            by_structure.setdefault(key, {"left": [], "right": []})[side].append(index)
    return by_structure


def _terminology_side(terminology: Terminology | None) -> tuple[str, tuple[str, str]] | None:
    modifier = terminology.type_modifier if terminology is not None else None
    if terminology is None or modifier is None or modifier.code not in (LEFT[1], RIGHT[1]):
        return None
    return ("left" if modifier.code == LEFT[1] else "right"), ("code", terminology.type.code)


def _name_side(name: str) -> tuple[str, tuple[str, str]] | None:
    """("left" | "right", ("name", the other words)) when exactly one word of the name is a side; case, spaces,
    underscores and punctuation do not matter."""
    words = re.findall(r"[^\W_]+", name.casefold())
    sides = [word for word in words if word in ("left", "right")]
    rest = " ".join(word for word in words if word not in ("left", "right"))
    if len(sides) != 1 or not rest:
        return None
    return sides[0], ("name", rest)
