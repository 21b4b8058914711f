"""Planning: everything decided about a dataset and a model before training, in one place.

- :mod:`~maskmed_core.plans.preprocessing_plans`: :class:`Plans`, the preprocessing a model file carries (target
  spacing, patch size, overlap, canonical orientation, CT intensity normalisation), checked when read from a file.
- :mod:`~maskmed_core.plans.fingerprint`: the dataset fingerprint and the plans derived from it (nnU-Net's rules:
  median spacing, a patch that keeps the images' proportions, foreground percentiles and z-score). The fingerprint
  is measured from the cases by :func:`maskmed_core.training.fingerprint.compute_fingerprint`.
- :mod:`~maskmed_core.plans.stages`: the network's strides and kernel sizes planned from patch size and spacing.

This package imports nothing from ``model`` or ``training``: both build on it.
"""

from maskmed_core.plans.preprocessing_plans import IntensityNormalization, Plans

__all__ = ["IntensityNormalization", "Plans"]
