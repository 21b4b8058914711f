"""Measuring the dataset fingerprint (spacings, shapes, foreground intensities) from the training cases, as nnU-Net
does; the plans are derived from it in :mod:`maskmed_core.plans.fingerprint`.

Intensity statistics come from CT voxels inside the foreground (label > 0 after the label mapping): nnU-Net samples
a fixed number of them per case (with replacement), pools the samples of all cases and takes the 0.5th and 99.5th
percentiles (the clipping range) and the mean and standard deviation (the z-score) of the pool.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

from maskmed_core.io import InputError, to_canonical
from maskmed_core.plans.fingerprint import Fingerprint
from maskmed_core.training.dataset import DatasetSpec, LabelMapping, read_case


def compute_fingerprint(
    spec: DatasetSpec,
    label_mapping: LabelMapping | None = None,
    samples_per_case: int = 10000,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> Fingerprint:
    """The fingerprint of ``spec``'s training cases (run ``check_dataset`` first: every case must be readable).

    samples_per_case: foreground voxels drawn (with replacement) from each case; a case without foreground
        contributes no intensity samples. seed: of the sampling, so the fingerprint is reproducible.
    progress: called after each case with (cases done, number of cases, case name).

    Raises InputError when a case cannot be read, has no label map or a label map on another grid, and when no
    case has any foreground.
    """
    if not spec.cases:
        raise InputError("The dataset has no training cases: nothing to compute a fingerprint from.")
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    for index, case in enumerate(spec.cases):
        image, label = read_case(case, label_mapping)
        if label is None:
            raise InputError(f"Case {case.name} has no label map; every training case needs one (see check_dataset).")
        # The canonical order makes spacings and shapes comparable across cases stored in different orientations,
        # and lines up a label map stored with other flips (e.g. LAS) with its image, voxel for voxel.
        canonical_image, canonical_label = to_canonical(image), to_canonical(label)
        if canonical_image.GetSize() != canonical_label.GetSize():
            raise InputError(
                f"Case {case.name}: the label map is not on the image's grid; run the dataset check for details."
            )
        spacings.append(canonical_image.GetSpacing()[::-1])
        shapes.append(canonical_image.GetSize()[::-1])
        voxels = sitk.GetArrayViewFromImage(canonical_image)
        foreground = voxels[sitk.GetArrayViewFromImage(canonical_label) > 0]
        if foreground.size:
            samples.append(rng.choice(foreground, samples_per_case, replace=True).astype(np.float64))
        if progress is not None:
            progress(index + 1, len(spec.cases), case.name)
    if not samples:
        raise InputError(
            "No case has any foreground voxel (label > 0 after the label mapping): check the label maps and the "
            "label mapping."
        )
    pooled = np.concatenate(samples)
    low, high = np.percentile(pooled, [0.5, 99.5])
    return Fingerprint(
        median_spacing_zyx=tuple(float(v) for v in np.median(np.array(spacings, dtype=float), axis=0)),
        foreground_percentile_00_5=float(low),
        foreground_percentile_99_5=float(high),
        foreground_mean=float(pooled.mean()),
        foreground_std=float(pooled.std()),
        median_shape_zyx=tuple(float(v) for v in np.median(np.array(shapes, dtype=float), axis=0)),
        num_cases=len(spec.cases),
    )
