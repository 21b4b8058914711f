"""Writing results: label maps (.nii.gz, .nrrd), Slicer segmentations (.seg.nrrd), probability maps.

Every file is written under a temporary name in the target folder and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskmed_core.classes import SegmentClass
from maskmed_core.io.writing import atomic_output, write_image


def _terminology(segment_class: SegmentClass) -> dict | None:
    terminology = segment_class.terminology
    if terminology is None:
        return None
    entry = {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": [terminology.category.scheme, terminology.category.code, terminology.category.meaning],
        "type": [terminology.type.scheme, terminology.type.code, terminology.type.meaning],
        "anatomicContextName": "Anatomic codes - DICOM master list",
    }
    if terminology.type_modifier is not None:
        modifier = terminology.type_modifier
        entry["typeModifier"] = [modifier.scheme, modifier.code, modifier.meaning]
    return entry


def write_label_map(label_image, path: str | Path) -> Path:
    """A SimpleITK label image as .nii.gz / .nrrd (compressed), atomically."""
    return write_image(label_image, path)


def write_seg_nrrd(label_image, classes: list[SegmentClass], path: str | Path) -> Path:
    """A Slicer segmentation file: one segment per class (name, colour, terminology), label value = class label.

    Every class gets a segment, empty ones included, so that a Slicer user sees the full class list.
    Geometry (ijk -> LPS) is the label image's own, so the segmentation lines up with the input volume.
    """
    import SimpleITK as sitk  # noqa: N813
    import slicerio

    _check_header_text(classes)
    voxels_zyx = sitk.GetArrayViewFromImage(label_image)
    voxels_ijk = np.ascontiguousarray(voxels_zyx.transpose(2, 1, 0))
    direction = np.array(label_image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(label_image.GetSpacing())[None, :]
    ijk_to_lps[:3, 3] = label_image.GetOrigin()
    segments = []
    # pynrrd writes ASCII headers only; Slicer writes a segment's name as its UTF-8 bytes. A name beyond ASCII is
    # written as an ASCII placeholder first and replaced by its UTF-8 bytes in the header afterwards.
    utf8_names = {f"MaskMedUtf8Name{index:05d}": c.name for index, c in enumerate(classes) if not c.name.isascii()}
    placeholder_of = {name: placeholder for placeholder, name in utf8_names.items()}
    for segment_class in classes:
        segment = {
            "id": f"Segment_{segment_class.label}",
            "name": placeholder_of.get(segment_class.name, segment_class.name),
            "color": [c / 255.0 for c in segment_class.color],
            "labelValue": int(segment_class.label),
            "layer": 0,
        }
        terminology = _terminology(segment_class)
        if terminology is not None:
            segment["terminology"] = terminology
        segments.append(segment)
    segmentation = {
        "voxels": voxels_ijk,
        "ijkToLPS": ijk_to_lps,
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    path = Path(path)
    with atomic_output(path, verify=lambda written: _verify_seg_nrrd(written, len(segments))) as temporary:
        slicerio.write_segmentation(str(temporary), segmentation)
        if utf8_names:
            _replace_in_header(temporary, {k.encode("ascii"): v.encode("utf-8") for k, v in utf8_names.items()})
    return path


def _replace_in_header(path: Path, replacements: dict[bytes, bytes]) -> None:
    """Replace byte strings in the (attached) NRRD header of ``path``, up to the blank line; the data stays as is."""
    content = path.read_bytes()
    end = content.index(b"\n\n") + 2
    header = content[:end]
    for old, new in replacements.items():
        if header.count(old) != 1:
            raise OSError(f"the segmentation header written to {path} does not hold {old!r} once")
        header = header.replace(old, new)
    path.write_bytes(header + content[end:])


def _check_header_text(classes: list[SegmentClass]) -> None:
    """Refuse any text that would change the NRRD header's structure (each field is one line) before writing.

    Model files are checked on load already; this guards every other way classes can arrive (Python callers).
    """
    from maskmed_core.classes import check_class

    for index, segment_class in enumerate(classes):
        check_class(segment_class, f"classes[{index}]")


def _verify_seg_nrrd(path: Path, num_segments: int) -> None:
    """The written header must have exactly the fields we meant: no detached data file, one name per segment; and
    the voxels must read back (a truncated gzip stream does not)."""
    import errno
    import re

    from maskmed_core.io.writing import verify_image_file

    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    header = head.split(b"\n\n", 1)[0].decode("latin-1")
    keys = [line.split(":", 1)[0].strip().lower() for line in header.splitlines()[1:] if not line.startswith("#")]
    names = [line for line in header.splitlines() if re.match(r"Segment\d+_Name:=", line)]
    if any(key.replace(" ", "") == "datafile" for key in keys) or len(names) != num_segments:
        raise OSError(errno.EIO, f"the segmentation header written to {path} does not have the expected fields")
    verify_image_file(path)


def write_labels(label_image, classes: list[SegmentClass], path: str | Path) -> Path:
    """Pick the writer from the suffix: .seg.nrrd -> Slicer segmentation, else a plain label map."""
    if str(path).endswith(".seg.nrrd"):
        return write_seg_nrrd(label_image, classes, path)
    return write_label_map(label_image, path)
