"""Preprocessing plans kept with a model: what the network expects its input to look like."""

from __future__ import annotations

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
    permutation/flip to it; see ``maskmed_core.io.orientation``).
    """

    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size: tuple[int, int, int] = (64, 96, 96)
    overlap: float = 0.5
    orientation: str = "LPS"
    modality: str = "CT"
    intensity: IntensityNormalization = field(default_factory=IntensityNormalization)

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        patch_size = tuple(int(s) for s in self.patch_size)
        if len(spacing) != 3 or any(s <= 0 for s in spacing):
            raise ValueError(f"plans.spacing must be three positive millimetre values, got {spacing}")
        if len(patch_size) != 3 or any(s < 1 for s in patch_size):
            raise ValueError(f"plans.patch_size must be three positive voxel counts, got {patch_size}")
        self.spacing = (spacing[0], spacing[1], spacing[2])
        self.patch_size = (patch_size[0], patch_size[1], patch_size[2])
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"plans.overlap must be in [0, 1), got {self.overlap}")
        if isinstance(self.intensity, dict):
            self.intensity = IntensityNormalization(**self.intensity)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plans:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown plans fields: {', '.join(sorted(unknown))}")
        return cls(**data)
