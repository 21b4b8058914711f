"""Checks made before any heavy work: slice thickness the model can use, the memory and number of windows it
will need. They take an image or an image header (``maskmed_core.io.volume_checks.ImageHeader``), so a path is judged
from its header before its voxels are read."""

from __future__ import annotations

import math
import os

from maskmed_core.io.errors import InputError
from maskmed_core.plans import Plans

# An input slice may be at most this many times thicker than the model's voxels along that axis: beyond
# it, whole organs (adrenal glands, gallbladder) fall between slices and the output is interpolation.
MAX_SPACING_RATIO = 3.0
GIB = 2**30


def check_spacing(image, plans: Plans) -> None:
    """Refuse inputs with voxels far coarser than the model's along some axis (e.g. 0.5 x 0.5 x 10 mm)."""
    import numpy as np

    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))  # rows: physical L, P, S; columns: index axes
    index_axis_of = direction.argmax(1)  # the index axis closest to each physical axis, as to_canonical pairs them
    spacing_xyz = [image.GetSpacing()[index_axis_of[p]] for p in range(3)]
    spacing = tuple(spacing_xyz[::-1])  # canonical (z, y, x)
    for axis, (have, want) in enumerate(zip(spacing, plans.spacing, strict=True)):
        if have > MAX_SPACING_RATIO * want:
            raise InputError(
                f"the volume's voxels are {have:.2f} mm along the {'zyx'[axis]} axis (spacing "
                f"{' x '.join(f'{s:.2f}' for s in spacing[::-1])} mm), more than {MAX_SPACING_RATIO:g} times the "
                f"model's {want:.2f} mm: reconstruct the series with thinner slices (at most "
                f"{MAX_SPACING_RATIO * want:.1f} mm) and segment that"
            )


# Bytes per model-grid voxel for each query: its float32 stitched mask, then the uint8 mask and its float32 copy
# that thresholding multiplies (``SegmentationResult._masks_float``).
BYTES_PER_QUERY_VOXEL = 4 + 1 + 4
# For each class: its float32 probability map (C, z, y, x) on the model grid while thresholding
# (``result.stitched_class_probabilities``, held whole by ``model_labels`` and the probability maps' writer).
BYTES_PER_CLASS_VOXEL = 4
# Per model-grid voxel whatever the model: the stitching's weight map, and while thresholding the winning
# probability (float32), its class index (int64) and the label map (int32).
BYTES_PER_MODEL_VOXEL = 4 + 4 + 8 + 4


def estimate_memory_bytes(image, plans: Plans, num_queries: int, num_classes: int) -> int:
    """Peak memory of one prediction (bytes), from the input size, the model grid, the number of queries Q and
    of classes C.

    Input side: the image, its float32 copy and the resampled copy around it, and the uint8 label map
    on the input grid with its reoriented copy. Model side, per model-grid voxel: Q times BYTES_PER_QUERY_VOXEL,
    C times BYTES_PER_CLASS_VOXEL (a 1000-class model on a 273 x 273 x 300 grid: 89 GB of class maps) and
    BYTES_PER_MODEL_VOXEL; plus a fixed allowance for the network on one patch.
    """
    input_voxels = math.prod(image.GetSize())
    input_bytes = input_voxels * (image.GetSizeOfPixelComponent() + 4 + 2)
    model_voxels = math.prod(model_size_zyx(image, plans))
    per_voxel = num_queries * BYTES_PER_QUERY_VOXEL + num_classes * BYTES_PER_CLASS_VOXEL + BYTES_PER_MODEL_VOXEL
    network_bytes = math.prod(plans.patch_size) * 2000  # activations of one patch (measured ~1.1 kB/voxel)
    return int(input_bytes + model_voxels * per_voxel + network_bytes)


def proc_field_bytes(path: str, field: str) -> int | None:
    """A "Field:   N kB" line of a Linux /proc file (e.g. /proc/meminfo MemAvailable) in bytes; None without it."""
    try:
        with open(path, encoding="ascii") as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    return proc_field_bytes("/proc/meminfo", "MemAvailable")


def check_memory(image, plans: Plans, num_queries: int, num_classes: int) -> None:
    """Refuse, with the numbers, a volume whose prediction would not fit in the memory budget
    (``maskmed_core.untrusted.memory_budget_bytes``: MemAvailable, or MASKMED_MEMORY_BUDGET_MB)."""
    from maskmed_core.untrusted import MEMORY_BUDGET_ENV, memory_budget_bytes

    if os.environ.get("MASKMED_SKIP_MEMORY_CHECK") == "1":
        return
    needed = estimate_memory_bytes(image, plans, num_queries, num_classes)
    available = memory_budget_bytes() if os.environ.get(MEMORY_BUDGET_ENV) else available_memory_bytes()
    if available is not None and needed > available:
        size = " x ".join(str(s) for s in image.GetSize())
        model_size = " x ".join(str(s) for s in model_size_zyx(image, plans)[::-1])
        raise InputError(
            f"segmenting this {size} volume with a model of {num_classes} classes and {num_queries} queries needs "
            f"about {needed / GIB:.1f} GiB of memory (one map per class and per query on the {model_size} model "
            f"grid) but only {available / GIB:.1f} GiB is available: crop the volume to the region of interest, close "
            "other programs, or run on a machine with more memory (set MASKMED_SKIP_MEMORY_CHECK=1 to try anyway)"
        )


# Sliding windows per volume: a 512 x 512 x 1000 CT at the default plans needs a few hundred; the bound stops a
# plan or a volume that would run for hours (overlap near 1) before the first window.
MAX_WINDOWS = 5000


def model_size_zyx(image, plans: Plans) -> list[int]:
    """The size of the model grid (voxels, canonical-like (z, y, x) index order of the input) an image or header is
    resampled to, as ``preprocessing.model_grid_for`` rounds it."""
    sizes_spacings_targets = zip(image.GetSize()[::-1], image.GetSpacing()[::-1], plans.spacing, strict=True)
    return [max(1, round(n * s / t)) for n, s, t in sizes_spacings_targets]


def check_windows(image, plans: Plans) -> int:
    """The number of sliding windows on the model grid; InputError when it exceeds MAX_WINDOWS."""
    from maskmed_core.inference.sliding_window import window_starts

    model_size = model_size_zyx(image, plans)
    count = math.prod(
        len(window_starts(n, patch, plans.overlap)) for n, patch in zip(model_size, plans.patch_size, strict=True)
    )
    if count > MAX_WINDOWS:
        raise InputError(
            f"segmenting this {' x '.join(map(str, image.GetSize()))} volume would take {count:,} sliding windows "
            f"(model grid {' x '.join(map(str, model_size))}, patch {plans.patch_size}, overlap {plans.overlap:g}), "
            f"more than the {MAX_WINDOWS:,} allowed: crop the volume to the region of interest"
        )
    return count


# A volume thinner than this fraction of the patch along an axis (on the model grid) is mostly padding to the
# network: 8 slices of 3 mm against a 64-slice patch. Organs cut by both ends of such a slab are often missed or
# mislabelled; two slices of a 480 x 480 scan are the typical case.
MIN_EXTENT_FRACTION_OF_PATCH = 1 / 8


def thin_volume_warning(image, plans: Plans) -> str | None:
    """A warning when the volume spans fewer model-grid voxels along an axis than ``MIN_EXTENT_FRACTION_OF_PATCH``
    of the patch (it is segmented all the same), else None."""
    model_size = model_size_zyx(image, plans)
    sizes_spacings = zip(image.GetSize()[::-1], image.GetSpacing()[::-1], strict=True)
    for axis, (have, patch, (slices, spacing)) in enumerate(zip(model_size, plans.patch_size, sizes_spacings,
                                                                strict=True)):
        needed = math.ceil(patch * MIN_EXTENT_FRACTION_OF_PATCH)
        if have < needed:
            return (
                f"the volume is only {slices * spacing:g} mm thick along its {'zyx'[axis]} axis ({slices} "
                f"voxel{'s' * (slices != 1)} of {spacing:g} mm), less than the {needed * plans.spacing[axis]:g} mm "
                "the model needs for context: organs cut by its ends are likely missed or mislabelled; segment a "
                "volume that covers the organs whole"
            )
    return None
