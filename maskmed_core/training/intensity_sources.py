"""Where a training patch's intensities come from: the real CT, the real CT in another contrast phase, or a CT
synthesised from the patch's tissue map (``synthesis.py``). The augmenter calls one of these after the geometric
transforms (see ``Augmenter.__call__``), so synthesis draws on the deformed anatomy.

Images inside training are normalised like the network's input (``plans.intensity``: clip, then z-score); these
convert to HU and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskmed_core.plans import IntensityNormalization
from maskmed_core.training.synthesis import SynthesisPriors, change_contrast_phase, synthesize_ct


@dataclass(frozen=True)
class SynthesisOptions:
    """How often each source is used (probabilities per patch).

    synthetic_ratio: share of patches drawn from label-only cases (when there are any; the rest from real cases).
    synthetic_prob: a patch of a real case with a tissue map gets a synthesised image instead of its own.
    contrast_prob: otherwise, its real image is shown in another contrast phase.
    field_of_view_cut_prob: a synthesised scan ends inside the patch / has a round in-plane field of view.
    """

    synthetic_ratio: float = 0.5
    synthetic_prob: float = 0.0
    contrast_prob: float = 0.0
    field_of_view_cut_prob: float = 0.25

    def __post_init__(self) -> None:
        for name in ("synthetic_ratio", "synthetic_prob", "contrast_prob", "field_of_view_cut_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def to_hu(image: torch.Tensor, intensity: IntensityNormalization) -> torch.Tensor:
    return image * intensity.std + intensity.mean


def from_hu(image_hu: torch.Tensor, intensity: IntensityNormalization) -> torch.Tensor:
    return (image_hu.clamp(intensity.clip_low, intensity.clip_high) - intensity.mean) / intensity.std


class SyntheticImage:
    """Draws a CT from the patch's tissue map; labels outside the simulated field of view become background."""

    def __init__(self, priors: SynthesisPriors, intensity: IntensityNormalization, spacing_zyx, seed: int,
                 field_of_view_cut_prob: float) -> None:
        self.priors, self.intensity, self.spacing = priors, intensity, tuple(float(s) for s in spacing_zyx)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.field_of_view_cut_prob = field_of_view_cut_prob

    def __call__(
        self, image: torch.Tensor | None, tissue: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if tissue is None:
            raise ValueError("synthesis needs the patch's tissue map")
        drawn = synthesize_ct(tissue, self.priors, self.generator, self.spacing, self.field_of_view_cut_prob)
        labels = torch.where(drawn.field_of_view, labels, torch.zeros_like(labels))
        return from_hu(drawn.image, self.intensity)[None], labels


class ContrastPhase:
    """Shows a real CT patch in another contrast phase (enhancing classes shifted by the phase priors)."""

    def __init__(self, priors: SynthesisPriors, intensity: IntensityNormalization, seed: int) -> None:
        self.priors, self.intensity = priors, intensity
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(
        self, image: torch.Tensor | None, tissue: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image is None or tissue is None:
            raise ValueError("a contrast phase change needs the real image and its tissue map")
        changed, _ = change_contrast_phase(to_hu(image[0], self.intensity), tissue, self.priors, self.generator)
        return from_hu(changed, self.intensity)[None], labels


def choose_source(
    options: SynthesisOptions,
    has_image: bool,
    has_tissue: bool,
    rng: np.random.Generator,
    priors: SynthesisPriors | None,
    intensity: IntensityNormalization,
    spacing_zyx,
):
    """The intensity source of one patch (None: the real image as it is). Always draws the same numbers from
    ``rng`` (two uniforms and a seed), whatever it chooses, so that a sample stream stays reproducible."""
    synthetic_draw, contrast_draw = rng.random(), rng.random()
    seed = int(rng.integers(0, 2**63 - 1))
    if not has_tissue or priors is None:
        if not has_image:
            raise ValueError("a label-only case needs its tissue map and the synthesis priors")
        return None
    if not has_image or synthetic_draw < options.synthetic_prob:
        return SyntheticImage(priors, intensity, spacing_zyx, seed, options.field_of_view_cut_prob)
    if contrast_draw < options.contrast_prob:
        return ContrastPhase(priors, intensity, seed)
    return None
