"""Preprocessing plans kept with a model: what the network expects its input to look like."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class IntensityNormalization:
    """CT normalisation as nnU-Net's: clip to foreground percentiles (HU), then z-score."""

    clip_low: float = -958.0
    clip_high: float = 327.0
    mean: float = 82.9
    std: float = 136.9


@dataclass
class Plans:
    """Target spacing (mm) and patch size (voxels) in the canonical (z, y, x) axis order.

    ``orientation`` is the canonical orientation images are brought to before anything else (closest
    permutation/flip to it; see ``maskmed_core.io.orientation``). ``modality`` is what the intensity normalisation
    is made for: CT (clipping in Hounsfield units); a model file that claims another modality is refused, as its
    inputs would be normalised wrongly.
    """

    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size: tuple[int, int, int] = (64, 96, 96)
    overlap: float = 0.5
    orientation: str = "LPS"
    modality: str = "CT"
    intensity: IntensityNormalization = field(default_factory=IntensityNormalization)

    def __post_init__(self) -> None:
        """Check types and ranges (plans may come from a stranger's model file); raises UntrustedValueError."""
        if isinstance(self.intensity, dict):
            fields = _known_fields(IntensityNormalization, self.intensity, "plans.intensity")
            self.intensity = IntensityNormalization(**fields)
        _check_plans(self)
        spacing = tuple(float(s) for s in self.spacing)  # three values: checked by _check_plans
        patch_size = tuple(int(s) for s in self.patch_size)
        self.spacing = (spacing[0], spacing[1], spacing[2])
        self.patch_size = (patch_size[0], patch_size[1], patch_size[2])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plans:
        return cls(**_known_fields(cls, data, "plans"))


# Bounds on plans read from a file. Spacing: CT voxels are 0.1..10 mm; a model grid outside 0.05..20 mm would
# make a label map of a handful of voxels (or billions). Patch: up to 512 per axis and 256^3 voxels in all.
# Overlap above 0.9 multiplies the number of windows by more than 1000 over overlap 0 (hours of inference).
SPACING_RANGE_MM = (0.05, 20.0)
MAX_PATCH_AXIS = 512
MAX_PATCH_VOXELS = 256**3
MAX_OVERLAP = 0.9
MAX_HU = 1e5


def _known_fields(cls: type, data: Any, field: str) -> dict[str, Any]:
    from maskmed_core.untrusted import UnknownFieldsError, UntrustedValueError

    if not isinstance(data, dict):
        raise UntrustedValueError(field, f"expected an object of fields, got {type(data).__name__}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise UnknownFieldsError(field, unknown)
    return data


def _check_plans(plans: Plans) -> None:
    from maskmed_core.untrusted import UntrustedValueError, check_int, check_number, check_sequence

    for axis, value in enumerate(check_sequence(plans.spacing, "plans.spacing", 3, 3)):
        check_number(value, f"plans.spacing[{axis}]", *SPACING_RANGE_MM)
    for axis, value in enumerate(check_sequence(plans.patch_size, "plans.patch_size", 3, 3)):
        check_int(value, f"plans.patch_size[{axis}]", 1, MAX_PATCH_AXIS)
    if math.prod(plans.patch_size) > MAX_PATCH_VOXELS:
        raise UntrustedValueError("plans.patch_size", f"{math.prod(plans.patch_size):,} voxels per patch, more than "
                                  f"the {MAX_PATCH_VOXELS:,} allowed")
    check_number(plans.overlap, "plans.overlap", 0.0, MAX_OVERLAP)
    if plans.orientation != "LPS":
        raise UntrustedValueError("plans.orientation", f"{plans.orientation!r:.40}; MaskMed's canonical orientation is "
                                  "'LPS'")
    if plans.modality != "CT":
        raise UntrustedValueError("plans.modality", f"{plans.modality!r:.40}; MaskMed normalises CT (Hounsfield units) "
                                  "only: 'CT'")
    intensity = plans.intensity
    if not isinstance(intensity, IntensityNormalization):
        raise UntrustedValueError("plans.intensity", "expected an object of fields")
    low = check_number(intensity.clip_low, "plans.intensity.clip_low", -MAX_HU, MAX_HU)
    check_number(intensity.clip_high, "plans.intensity.clip_high", low, MAX_HU, low_open=True)
    check_number(intensity.mean, "plans.intensity.mean", -MAX_HU, MAX_HU)
    # std 0 divides every voxel by zero (all NaN/inf: an empty label map); below 1e-3 HU is no real CT's spread.
    check_number(intensity.std, "plans.intensity.std", 1e-3, MAX_HU)
