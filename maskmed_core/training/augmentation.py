"""Data augmentation of training patches with MONAI dictionary transforms (nnU-Net's recipe).

Axis order everywhere: (z, y, x) = (inferior->superior, anterior->posterior, right->left); axis 2 (x) is the
left-right axis. The image is (1, z, y, x) float32, the labels (z, y, x) integer class indices 0..C.

Pipeline, in order (each step with its own probability, see ``AugmentationConfig``):

1. rotation and isotropic scaling in ONE resampling (``RandAffined``: bilinear image, nearest labels, the same
   grid for both) from the larger sampled region down to the patch; when neither fires the patch is a plain
   centre crop (no interpolation, and much cheaper than resampling through an identity grid);
2. elastic deformation of the patch (``Rand3DElasticd``, off by default: slow on CPU);
3. image only: Gaussian noise, Gaussian blur, multiplicative brightness, contrast (around the mean, range
   kept), simulated low resolution, inverted gamma, gamma;
4. mirroring per axis (``RandFlipd``); a flip of x (left-right) swaps the lateral class pairs in the labels
   (a mirrored left kidney is a right kidney). With ``lateral_pairs=None`` (unknown anatomy) x is never
   flipped, whatever the config says;
5. image only, before the intensity steps of 3: thick slices, the image averaged along z over slabs and interpolated
   back (``maskmed_core.training.thick_slices``; off in every preset, ``thick_slice_prob``);
6. a small reconstruction field of view, last: outside a random in-plane rectangle the image becomes the padding
   value of air and the labels background (why: ``maskmed_core.training.field_of_view``). After the intensity
   steps, so that the padding is exactly the value inference uses.

The geometric steps (1, 2, 4) run first, on the image, the labels and, when given, the source tissue map; then an
optional ``intensity_source`` replaces the image (CT synthesised from the moved tissue map, or a real CT shown in
another contrast phase: ``maskmed_core.training.intensity_sources``), so that a synthesised image is drawn on the
deformed anatomy; then the thick slices (5) and the intensity steps (3).

Reproducibility: every call takes a ``np.random.Generator``; it draws one 32-bit seed from it and re-seeds
all MONAI transforms (``Compose.set_random_state``), so the output is a pure function of the input and that
generator's state, in any process. An ``Augmenter`` is stateful (MONAI keeps its random state and last
parameters in the transforms): use one per process/thread.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
)
from monai.transforms.spatial.array import RandAffineGrid

from maskmed_core.training.field_of_view import (
    DEFAULT_FIELD_OF_VIEW_SIZE,
    check_field_of_view_size,
    cut_to_field_of_view,
    field_of_view_box,
)
from maskmed_core.training.thick_slices import (
    DEFAULT_THICK_SLICE_FACTOR,
    check_thick_slice_factor,
    draw_thick_slice_factor,
    thicken_slices,
)

IMAGE = "image"
LABELS = "labels"
TISSUE = "tissue"  # optional: the source tissue map, moved with the labels (nearest) for synthesis after geometry
SPATIAL_KEYS = [IMAGE, LABELS, TISSUE]
LEFT_RIGHT_AXIS = 2


@dataclass
class AugmentationConfig:
    """Probabilities (per patch) and ranges. Defaults follow nnU-Net v2's 3d_fullres training.

    Angles are the largest |rotation| in degrees ABOUT the axes (z, y, x): about z is the in-plane (axial)
    rotation, larger by default than the out-of-plane ones since CT is usually coarser in z.
    ``scaling_range`` is the factor by which the sampling grid is stretched (MONAI's convention): > 1 zooms
    out (structures look smaller), < 1 zooms in; one factor for all three axes.
    ``noise_std`` is the largest standard deviation (drawn in [0, noise_std]); ``blur_sigma`` in voxels;
    ``brightness_range`` multiplies the image; ``contrast_range`` scales it around its mean, keeping its range;
    ``low_resolution_zoom`` is the down-sampling factor before up-sampling back; gamma is applied on the patch
    rescaled to [0, 1], keeping its mean and std (``gamma_inverted_prob``: on the inverted image).
    ``mirror_axes``: axes (0 = z, 1 = y, 2 = x) each flipped with ``mirror_prob``.
    ``field_of_view_size``: the side of the kept in-plane rectangle, as a fraction of the patch's y and x sides
    (drawn per axis); the rectangle may reach past the patch on any side.
    ``thick_slice_factor``: the slab thickness as a multiple of the patch's z spacing (1 <= low <= high).
    """

    rotation_prob: float = 0.2
    rotation_deg: tuple[float, float, float] = (30.0, 15.0, 15.0)
    scaling_prob: float = 0.2
    scaling_range: tuple[float, float] = (0.7, 1.4)
    elastic_prob: float = 0.0
    elastic_sigma: tuple[float, float] = (5.0, 8.0)
    elastic_magnitude: tuple[float, float] = (100.0, 200.0)
    noise_prob: float = 0.1
    noise_std: float = 0.1
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness_prob: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    low_resolution_prob: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_prob: float = 0.3
    gamma_inverted_prob: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror_prob: float = 0.5
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    field_of_view_prob: float = 0.0
    field_of_view_size: tuple[float, float] = DEFAULT_FIELD_OF_VIEW_SIZE
    thick_slice_prob: float = 0.0
    thick_slice_factor: tuple[float, float] = DEFAULT_THICK_SLICE_FACTOR

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes must be among 0 (z), 1 (y), 2 (x), got {self.mirror_axes}")
        if not 0.0 < self.scaling_range[0] <= self.scaling_range[1]:
            raise ValueError(f"scaling_range must be 0 < low <= high, got {self.scaling_range}")
        check_field_of_view_size(self.field_of_view_size)
        check_thick_slice_factor(self.thick_slice_factor)


def augmentation_preset(strength: str = "default") -> AugmentationConfig:
    """"default" (nnU-Net's), "strong" (wider ranges, more often, elastic on) or "none" (no augmentation)."""
    if strength == "default":
        return AugmentationConfig()
    if strength == "strong":
        return AugmentationConfig(
            rotation_prob=0.3, rotation_deg=(45.0, 30.0, 30.0), scaling_prob=0.3, scaling_range=(0.65, 1.6),
            elastic_prob=0.2, noise_prob=0.15, noise_std=0.15, blur_prob=0.25, blur_sigma=(0.5, 1.5),
            brightness_prob=0.2, brightness_range=(0.7, 1.3), contrast_prob=0.2, contrast_range=(0.65, 1.5),
            low_resolution_prob=0.3, low_resolution_zoom=(0.4, 1.0), gamma_prob=0.3, gamma_inverted_prob=0.15,
            gamma_range=(0.6, 1.7), field_of_view_prob=0.2,
        )
    if strength == "none":
        probabilities = {name: 0.0 for name in vars(AugmentationConfig()) if name.endswith("_prob")}
        return replace(AugmentationConfig(), **probabilities)
    raise ValueError(f"unknown augmentation strength {strength!r}: use 'default', 'strong' or 'none'")


def _rotation_matrix(radians: Sequence[float]) -> np.ndarray:
    """The 3x3 rotation MONAI's ``create_rotate`` builds: about axis 0, then 1, then 2 (composed right)."""
    a, b, c = radians
    r0 = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    r1 = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    r2 = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return r0 @ r1 @ r2


def augmentation_region_size(patch_size: Sequence[int], config: AugmentationConfig) -> tuple[int, int, int]:
    """(z, y, x) size of the region to sample so that any rotation/scaling of ``config`` stays inside it.

    The patch's sampling grid, rotated and stretched by the largest allowed amounts (searched over a grid of
    angles), must fit inside the region with one voxel to spare for interpolation. ``region - patch`` is even
    on every axis so that the patch is exactly the region's centre (no half-voxel shift).
    """
    patch = np.array([int(p) for p in patch_size], dtype=np.float64)
    if config.rotation_prob <= 0 and config.scaling_prob <= 0:
        return tuple(int(p) for p in patch)  # type: ignore[return-value]
    half = (patch - 1) / 2
    limits = np.deg2rad(config.rotation_deg) if config.rotation_prob > 0 else np.zeros(3)
    stretch = max(config.scaling_range[1], 1.0) if config.scaling_prob > 0 else 1.0
    extent = half.copy()
    steps = [np.linspace(-limit, limit, 13) if limit > 0 else np.zeros(1) for limit in limits]
    for angles in itertools.product(*steps):
        extent = np.maximum(extent, np.abs(_rotation_matrix(angles)) @ half)
    needed = extent * stretch + 1.0  # +1: the bilinear neighbour of the outermost sample
    margin = np.maximum(np.ceil(needed - half), 0)
    return tuple(int(p + 2 * m) for p, m in zip(patch, margin, strict=True))  # type: ignore[return-value]


class _RotateScaleGrid(RandAffineGrid):
    """MONAI's random affine grid with rotation and scaling switched on separately (nnU-Net draws them
    independently) and one scale factor for all axes (anisotropic stretching would distort anatomy)."""

    rotate: bool = True
    scale: bool = True

    def randomize(self, data: Any | None = None) -> None:
        super().randomize(data)
        if not self.rotate:
            self.rotate_params = [0.0] * len(self.rotate_params or [])
        if self.scale_params:
            factor = self.scale_params[0] if self.scale else 1.0
            self.scale_params = [factor] * len(self.scale_params)


class _RandRotateScaled(RandAffined):
    """``RandAffined`` from the sampled region to the patch: rotation with ``rotation_prob``, scaling with
    ``scaling_prob``; when neither fires, a centre crop instead of an identity resampling."""

    def __init__(
        self,
        patch_size: tuple[int, int, int],
        rotation_prob: float,
        rotation_rad: Sequence[float],
        scaling_prob: float,
        scaling_range: tuple[float, float],
    ) -> None:
        rotate_range = [(-r, r) for r in rotation_rad]
        scale_range = [(scaling_range[0] - 1.0, scaling_range[1] - 1.0)] * 3
        super().__init__(
            keys=SPATIAL_KEYS, spatial_size=patch_size, prob=1.0, rotate_range=rotate_range,
            scale_range=scale_range, mode=("bilinear", "nearest", "nearest"),
            # The region is already padded with air around the case; "border" keeps any sample past it air too.
            padding_mode=("border", "zeros", "zeros"), cache_grid=True, allow_missing_keys=True,
        )
        self.grid = _RotateScaleGrid(rotate_range=rotate_range, scale_range=scale_range)
        self.rand_affine.rand_affine_grid = self.grid
        # MONAI's Resample works in float64 by default: it converts the whole region (~10x the patch) to
        # float64 and samples in double, ~3x slower. float32 is exact enough (1e-5 voxel at 200 voxels).
        self.rand_affine.resampler.dtype = torch.float32
        self.rotation_prob = rotation_prob
        self.scaling_prob = scaling_prob
        self.crop = CenterSpatialCropd(keys=SPATIAL_KEYS, roi_size=patch_size, allow_missing_keys=True)
        self._decided = False

    def randomize(self, data: Any | None = None) -> None:
        if self._decided:  # already drawn by our __call__ before handing over to RandAffined.__call__
            return
        self.grid.rotate = bool(self.R.rand() < self.rotation_prob)
        self.grid.scale = bool(self.R.rand() < self.scaling_prob)
        self._do_transform = self.grid.rotate or self.grid.scale

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, Any]:
        self.randomize(None)
        if not self._do_transform:
            return self.crop(data)
        self._decided = True
        try:
            return super().__call__(data, lazy=lazy)
        finally:
            self._decided = False


class _LateralRandFlipd(RandFlipd):
    """``RandFlipd`` that also maps the labels through ``lookup`` when it flips (left/right partner swap)."""

    def __init__(self, prob: float, spatial_axis: int, lookup: torch.Tensor | None) -> None:
        # The tissue map is flipped without a swap: it only decides intensities, and left and right share priors.
        super().__init__(keys=SPATIAL_KEYS, prob=prob, spatial_axis=spatial_axis, allow_missing_keys=True)
        self.lookup = lookup

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = super().__call__(data, lazy=lazy)
        if self._do_transform and self.lookup is not None:
            labels = d[LABELS]
            d[LABELS] = self.lookup[labels.long()].to(labels.dtype)
        return d


def lateral_lookup(lateral_pairs: Sequence[tuple[int, int]], max_label: int = 65535) -> torch.Tensor:
    """Label lookup table (int64, ``max_label + 1`` entries) swapping each (a, b) pair, identity elsewhere."""
    lookup = torch.arange(max([max_label, *(max(int(a), int(b)) for a, b in lateral_pairs)]) + 1)
    seen: set[int] = set()
    for a, b in lateral_pairs:
        a, b = int(a), int(b)
        if a < 1 or b < 1 or a == b or a in seen or b in seen:
            raise ValueError(f"lateral_pairs must be disjoint pairs of class indices >= 1, got {lateral_pairs}")
        seen.update((a, b))
        lookup[a], lookup[b] = b, a
    return lookup


class Augmenter:
    """Augments one patch. ``region_size`` is the (z, y, x) size to sample (``PatchSampler.sample(size=...)``);
    the output is ``patch_size``.

    Args:
        config: probabilities and ranges.
        patch_size: output (z, y, x) size.
        lateral_pairs: 1-based class indices of left/right partners, e.g. [(2, 3), (11, 12)]; [] = anatomy
            known to have no lateral classes (x flips allowed); None = unknown (x flips off).
        seed: seed of the generator used when a call gets no ``rng``.
        air_value: the normalised value of air, which inference pads with (``Plans.intensity``); None = the
            patch's minimum before the intensity steps (the sampler pads with the case's minimum, air).
    """

    def __init__(
        self,
        config: AugmentationConfig,
        patch_size: Sequence[int],
        lateral_pairs: Sequence[tuple[int, int]] | None = None,
        seed: int = 0,
        air_value: float | None = None,
    ) -> None:
        self.config = config
        self.air_value = air_value
        self.patch_size: tuple[int, int, int] = tuple(int(p) for p in patch_size)  # type: ignore[assignment]
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be (z, y, x), got {patch_size}")
        self.lateral_pairs = None if lateral_pairs is None else [(int(a), int(b)) for a, b in lateral_pairs]
        self.region_size = augmentation_region_size(self.patch_size, config)
        self._rng = np.random.default_rng(seed)
        c = config
        transforms: list[Any] = [
            _RandRotateScaled(self.patch_size, c.rotation_prob, np.deg2rad(c.rotation_deg).tolist(),
                              c.scaling_prob, c.scaling_range),
        ]
        if c.elastic_prob > 0:
            # On the patch (not the larger region): its cost is a Gaussian smoothing of a full-size offset field.
            elastic = Rand3DElasticd(
                keys=SPATIAL_KEYS, sigma_range=c.elastic_sigma, magnitude_range=c.elastic_magnitude,
                prob=c.elastic_prob, mode=("bilinear", "nearest", "nearest"),
                padding_mode=("border", "border", "border"), allow_missing_keys=True,
            )
            elastic.rand_3d_elastic.resampler.dtype = torch.float32  # as above
            transforms.append(elastic)
        lookup = lateral_lookup(self.lateral_pairs) if self.lateral_pairs else None
        for axis in sorted(set(c.mirror_axes)):
            if axis == LEFT_RIGHT_AXIS and self.lateral_pairs is None:
                continue  # unknown anatomy: a mirrored left organ would be labelled with its own (left) class
            transforms.append(_LateralRandFlipd(c.mirror_prob, axis, lookup if axis == LEFT_RIGHT_AXIS else None))
        # Geometry first (where a synthesised image is drawn from the moved tissue map), then intensities.
        self.spatial = Compose(transforms)
        self.intensity = Compose([
            RandGaussianNoised(keys=IMAGE, prob=c.noise_prob, std=c.noise_std),
            RandGaussianSmoothd(keys=IMAGE, sigma_x=c.blur_sigma, sigma_y=c.blur_sigma, sigma_z=c.blur_sigma,
                                prob=c.blur_prob),
            RandScaleIntensityd(keys=IMAGE, factors=(c.brightness_range[0] - 1, c.brightness_range[1] - 1),
                                prob=c.brightness_prob),
            RandScaleIntensityFixedMeand(keys=IMAGE, factors=(c.contrast_range[0] - 1, c.contrast_range[1] - 1),
                                         fixed_mean=True, preserve_range=True, prob=c.contrast_prob),
            RandSimulateLowResolutiond(keys=IMAGE, zoom_range=c.low_resolution_zoom, prob=c.low_resolution_prob),
            RandAdjustContrastd(keys=IMAGE, gamma=c.gamma_range, invert_image=True, retain_stats=True,
                                prob=c.gamma_inverted_prob),
            RandAdjustContrastd(keys=IMAGE, gamma=c.gamma_range, retain_stats=True, prob=c.gamma_prob),
        ])

    def __call__(
        self,
        image: np.ndarray | torch.Tensor | None,
        labels: np.ndarray | torch.Tensor,
        rng: np.random.Generator | None = None,
        tissue: np.ndarray | torch.Tensor | None = None,
        intensity_source: IntensitySource | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augments image (1, z, y, x) float and labels (z, y, x) int of the same size, at least ``patch_size``
        with an even difference on every axis (``region_size`` is). Returns image (1, *patch_size) float32 and
        labels (*patch_size) int64, plain tensors. ``rng`` (default: the augmenter's own) advances by one draw.

        tissue: (z, y, x) source tissue map of the same size (see ``synthesis``), moved with the labels.
        intensity_source: called after the geometric transforms, before the intensity ones, with (image or None,
            tissue (z, y, x) int64 or None, labels (z, y, x) int64) on the patch; returns the (1, z, y, x) image and
            labels to go on with: a synthesised image, a real one in another contrast phase, or the image as it is.
            Needed when ``image`` is None (a label-only case).
        """
        self._check_inputs(image, labels, tissue, intensity_source)
        rng = self._rng if rng is None else rng
        # One word per step that draws; a step added later takes the next word, so the earlier words (and the
        # streams a seed gave before it) stay the same.
        seeds = np.random.SeedSequence(int(rng.integers(0, 2**32))).generate_state(4)
        self.spatial.set_random_state(seed=int(seeds[0]))
        self.intensity.set_random_state(seed=int(seeds[1]))
        data = _transform_input(image, labels, tissue)
        previous = get_track_meta()
        # MetaTensor bookkeeping (affines, applied operations) costs ~15 % and is not needed for patches.
        set_track_meta(False)
        try:
            moved_image, labels_out = self._move(data, intensity_source)
            box = self._field_of_view_box(np.random.default_rng(int(seeds[2])))
            air = None if box is None else self._air(moved_image)  # before the intensity steps change the image
            thickness = self._thick_slice_factor(np.random.default_rng(int(seeds[3])))
            if thickness is not None:
                moved_image = thicken_slices(torch.as_tensor(moved_image), thickness)
            image_out = torch.as_tensor(self.intensity({IMAGE: moved_image})[IMAGE]).to(torch.float32)
        finally:
            set_track_meta(previous)
        if box is not None and air is not None:
            image_out, labels_out = cut_to_field_of_view(image_out, labels_out, box, air)
        return image_out.contiguous(), labels_out.contiguous()

    def _check_inputs(
        self,
        image: np.ndarray | torch.Tensor | None,
        labels: np.ndarray | torch.Tensor,
        tissue: np.ndarray | torch.Tensor | None,
        intensity_source: IntensitySource | None,
    ) -> None:
        """ValueError unless the arrays have the sizes :meth:`__call__` documents and an image can be had."""
        shape = tuple(labels.shape)
        if image is not None and (image.ndim != 4 or image.shape[0] != 1 or tuple(image.shape[1:]) != shape):
            raise ValueError(f"expected image (1, z, y, x) and labels (z, y, x), got {image.shape}, {labels.shape}")
        if len(shape) != 3 or any(s < p or (s - p) % 2 for s, p in zip(shape, self.patch_size, strict=True)):
            raise ValueError(f"input size {shape} must be >= the patch {self.patch_size} by an even margin")
        if tissue is not None and tuple(tissue.shape) != shape:
            raise ValueError(f"tissue map {tuple(tissue.shape)} and labels {shape} differ in size")
        if image is None and intensity_source is None:
            raise ValueError("a case without an image needs an intensity_source (synthesis) to draw one")

    def _move(
        self, data: dict[str, torch.Tensor], intensity_source: IntensitySource | None
    ) -> tuple[Any, torch.Tensor]:
        """The geometric transforms on ``data``, then ``intensity_source`` (when given) on the moved patch.

        Returns the image (1, z, y, x) float to go on with and the labels (z, y, x) int64.
        """
        out = self.spatial(data)
        labels_out = torch.as_tensor(out[LABELS])[0].round().to(torch.int64)
        if intensity_source is None:
            return out[IMAGE], labels_out
        moved_tissue = torch.as_tensor(out[TISSUE])[0].round().to(torch.int64) if TISSUE in out else None
        moved_image = torch.as_tensor(out[IMAGE]).float() if IMAGE in out else None
        return intensity_source(moved_image, moved_tissue, labels_out)

    def _air(self, image: Any) -> float:
        """The value outside a cut field of view: ``air_value``, else the patch's minimum (the sampler's padding)."""
        return float(torch.as_tensor(image).min()) if self.air_value is None else self.air_value

    def _thick_slice_factor(self, rng: np.random.Generator) -> float | None:
        """The slab thickness (slices) of this patch's thick-slice step, or None when it does not fire."""
        c = self.config
        if c.thick_slice_prob <= 0 or rng.random() >= c.thick_slice_prob:
            return None
        return draw_thick_slice_factor(rng, c.thick_slice_factor)

    def _field_of_view_box(self, rng: np.random.Generator) -> tuple[slice, slice] | None:
        """The kept in-plane (y, x) rectangle of a small reconstruction field of view, or None (no cut)."""
        c = self.config
        if c.field_of_view_prob <= 0 or rng.random() >= c.field_of_view_prob:
            return None
        return field_of_view_box(rng, (self.patch_size[1], self.patch_size[2]), c.field_of_view_size)


def _transform_input(
    image: np.ndarray | torch.Tensor | None,
    labels: np.ndarray | torch.Tensor,
    tissue: np.ndarray | torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The MONAI dictionary of a patch: image (1, z, y, x) float32, labels and tissue (1, z, y, x) as given."""
    # No copies here: the region can be ~10x the patch, and most patches are only centre-cropped from it.
    # The labels keep their integer dtype until MONAI resamples them (in float32, nearest: indices exact).
    data: dict[str, torch.Tensor] = {LABELS: torch.as_tensor(labels).unsqueeze(0)}
    if image is not None:
        data[IMAGE] = torch.as_tensor(image, dtype=torch.float32)
    if tissue is not None:
        data[TISSUE] = torch.as_tensor(tissue).unsqueeze(0)
    return data


IntensitySource = Callable[
    [torch.Tensor | None, torch.Tensor | None, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
