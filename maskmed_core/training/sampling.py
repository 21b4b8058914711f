"""Patch sampling from preprocessed cases: foreground oversampling with rare classes favoured, padding with air.

All arrays are in the canonical axis order (z, y, x) = (inferior->superior, anterior->posterior,
right->left); patch and region sizes are (z, y, x) too.

A draw is "foreground" with probability ``foreground_fraction`` (nnU-Net's 0.33). A foreground draw picks a
class c with probability proportional to ``count_c ** -rare_class_power`` (count_c: the class's voxels over the
whole dataset, only classes present), then a case containing c uniformly, then one of that case's stored
voxels of c uniformly; the patch is placed so that this voxel lies inside its central ``center_jitter``
part (uniformly), i.e. centred with random jitter. Other draws take a case uniformly and a uniform position.

``sample(rng, size=region)`` can return a region larger than the final patch, centred on the same patch
window, so that rotation/scaling in the augmentation has real data in its corners and then crops the centre
(nnU-Net samples its "initial patch size" the same way). Only the final patch window is kept inside the case
(when the case is large enough); the margin around it may extend past the case and is padded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class CaseLike(Protocol):
    """What the sampler reads of a preprocessed case (the cache's ``PreprocessedCase`` satisfies it).

    ``image``: (z, y, x) float32 normalised CT, ``labels``: (z, y, x) uint8 class indices 0..C (0 = background),
    ``foreground``: class index -> (K, 3) int32 voxel coordinates (z, y, x) of that class (a sample of them).
    Arrays may be read-only ``np.memmap``; the sampler never writes to them.
    """

    name: str
    image: np.ndarray | None  # None: a label-only case (its image is synthesised from ``tissue``)
    labels: np.ndarray
    foreground: Mapping[int, np.ndarray]
    tissue: np.ndarray | None


@dataclass(frozen=True)
class PatchRegion:
    """Where one draw lies: ``start`` (z, y, x) of a region of ``size`` voxels in case ``case_index``.

    ``start`` may be negative and ``start + size`` may exceed the case shape: that part is padded.
    ``foreground_class`` is the class the draw was centred on, or None for a uniform draw.
    """

    case_index: int
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    foreground_class: int | None


def _triple(value: Sequence[int] | int, what: str) -> tuple[int, int, int]:
    values = (int(value),) * 3 if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"{what} must be three positive sizes (z, y, x), got {value}")
    return values  # type: ignore[return-value]


class PatchSampler:
    """Draws training patches from ``cases``.

    Args:
        cases: the preprocessed cases (see ``CaseLike``).
        patch_size: final patch size (z, y, x).
        foreground_fraction: probability that a draw is centred on a foreground voxel.
        rare_class_power: foreground class weights are ``voxel_count ** -power``: 0 = every present class
            equally often, 1 = inverse frequency; 0.5 favours small organs without ignoring big ones.
        center_jitter: the chosen voxel lies uniformly inside the central ``center_jitter`` fraction of the
            patch (0 = exactly centred, 1 = anywhere in the patch). 0.5 keeps it inside after rotation/scaling.
        class_voxel_counts: class index -> voxel count over the dataset. If None it is counted once here with
            ``np.bincount`` over every case's labels (one full read of the labels; pass it when it is known).
        seed: seed of the generator used when ``sample``/``draw`` get no ``rng``.
        focus_classes: class indices that get ``focus_share`` of the foreground draws together (split among them by
            the same rare-class weights): the classes a fine-tune adds, which the model must see often, among the
            many it keeps.
    """

    def __init__(
        self,
        cases: Sequence[CaseLike],
        patch_size: Sequence[int],
        foreground_fraction: float = 0.33,
        rare_class_power: float = 0.5,
        center_jitter: float = 0.5,
        class_voxel_counts: Mapping[int, int] | None = None,
        seed: int = 0,
        focus_classes: Sequence[int] = (),
        focus_share: float = 0.5,
    ) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if not 0.0 <= center_jitter <= 1.0:
            raise ValueError(f"center_jitter must be in [0, 1], got {center_jitter}")
        self.cases = cases
        self.patch_size = _triple(patch_size, "patch_size")
        self.foreground_fraction = float(foreground_fraction)
        self.rare_class_power = float(rare_class_power)
        self.center_jitter = float(center_jitter)
        self._rng = np.random.default_rng(seed)
        self._pad_values: dict[int, float] = {}

        # Which cases hold stored voxels of each class: only those can be centred on.
        self.cases_with_class: dict[int, list[int]] = {}
        for index, case in enumerate(cases):
            for cls, coords in case.foreground.items():
                if int(cls) > 0 and len(coords) > 0:
                    self.cases_with_class.setdefault(int(cls), []).append(index)
        counts = dict(class_voxel_counts) if class_voxel_counts is not None else _count_voxels(cases)
        self.classes = np.array(sorted(c for c in self.cases_with_class if counts.get(c, 0) > 0), dtype=np.int64)
        if len(self.classes):
            weights = np.array([float(counts[c]) for c in self.classes]) ** -self.rare_class_power
            focus = np.isin(self.classes, np.asarray(list(focus_classes), dtype=np.int64))
            if focus.any() and not focus.all():
                weights[focus] *= focus_share / weights[focus].sum()
                weights[~focus] *= (1.0 - focus_share) / weights[~focus].sum()
            self.class_probabilities = weights / weights.sum()
        else:
            # No foreground anywhere: every draw is uniform.
            self.class_probabilities = np.zeros(0)

    def draw(self, rng: np.random.Generator | None = None, size: Sequence[int] | None = None) -> PatchRegion:
        """Chooses a case and a region of ``size`` (default: the patch size) around a patch window."""
        rng = self._rng if rng is None else rng
        region = self.patch_size if size is None else _triple(size, "size")
        if any(r < p for r, p in zip(region, self.patch_size, strict=True)):
            raise ValueError(f"the sampled region {region} must be at least the patch size {self.patch_size}")
        # Always consume the same random numbers in the same order, so a stream stays reproducible.
        foreground = rng.random() < self.foreground_fraction and len(self.classes) > 0
        if foreground:
            cls = int(rng.choice(self.classes, p=self.class_probabilities))
            candidates = self.cases_with_class[cls]
            case_index = candidates[int(rng.integers(len(candidates)))]
            coords = self.cases[case_index].foreground[cls]
            voxel = np.asarray(coords[int(rng.integers(len(coords)))], dtype=np.int64)
            shape = self.cases[case_index].labels.shape
            window = []
            for axis in range(3):
                p = self.patch_size[axis]
                # Offset of the voxel inside the patch window: uniform over the central jitter part.
                half_span = int(round(self.center_jitter * (p - 1) / 2))
                offset = (p - 1) // 2 + int(rng.integers(-half_span, half_span + 1))
                window.append(self._clamp(int(voxel[axis]) - offset, shape[axis], p, rng))
            foreground_class: int | None = cls
        else:
            case_index = int(rng.integers(len(self.cases)))
            shape = self.cases[case_index].labels.shape
            window = []
            for axis in range(3):
                p = self.patch_size[axis]
                high = max(shape[axis] - p, 0)
                start = int(rng.integers(0, high + 1))
                window.append(self._clamp(start, shape[axis], p, rng))
            foreground_class = None
        # The region is centred on the patch window; region - patch is split evenly (floor before).
        start = tuple(w - (r - p) // 2 for w, r, p in zip(window, region, self.patch_size, strict=True))
        return PatchRegion(case_index, start, region, foreground_class)  # type: ignore[arg-type]

    @staticmethod
    def _clamp(start: int, extent: int, patch: int, rng: np.random.Generator) -> int:
        """Keeps the patch window inside the case; a case smaller than the patch is placed at a random offset
        inside the window (nnU-Net does the same), the rest padded. Always draws one number."""
        pad_offset = int(rng.integers(0, max(patch - extent, 0) + 1))
        if extent >= patch:
            return min(max(start, 0), extent - patch)
        return -pad_offset

    def crop(
        self, region: PatchRegion, labels_dtype: np.dtype | type | None = np.int64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reads ``region``: image (1, z, y, x) float32 padded with the case's minimum (air), labels (z, y, x)
        padded with 0, as ``labels_dtype`` (None: the case's own dtype, e.g. uint8, 8x less to copy for a
        large augmentation region). Returns fresh arrays (never views of a memmap). A label-only case has no image:
        use ``crop_labels``."""
        case = self.cases[region.case_index]
        if case.image is None:
            raise ValueError(f"case {case.name} has no image (label-only): use crop_labels")
        src_t, dst_t, inside = self._windows(region)
        image = np.empty((1, *region.size), dtype=np.float32)
        labels = np.zeros(region.size, dtype=case.labels.dtype if labels_dtype is None else labels_dtype)
        if not inside:
            image.fill(self._pad_value(region.case_index))
        image[(0, *dst_t)] = case.image[src_t]
        labels[dst_t] = case.labels[src_t]
        return image, labels

    def crop_labels(self, region: PatchRegion, tissue: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (z, y, x, the case's dtype) and tissue map (z, y, x uint8, or None when the case has none or
        ``tissue`` is False) of ``region``, both padded with 0 (background, air)."""
        case = self.cases[region.case_index]
        src_t, dst_t, _ = self._windows(region)
        labels = np.zeros(region.size, dtype=case.labels.dtype)
        labels[dst_t] = case.labels[src_t]
        tissue_map = None
        case_tissue = getattr(case, "tissue", None)  # cases made before tissue maps existed have none
        if tissue and case_tissue is not None:
            tissue_map = np.zeros(region.size, dtype=np.uint8)
            tissue_map[dst_t] = case_tissue[src_t]
        return labels, tissue_map

    def _windows(self, region: PatchRegion) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
        """Source and destination slices of ``region`` in its case, and whether it lies wholly inside."""
        case = self.cases[region.case_index]
        shape = case.labels.shape
        src, dst = [], []
        for start, size, extent in zip(region.start, region.size, shape, strict=True):
            lo, hi = max(start, 0), min(start + size, extent)
            if hi <= lo:  # entirely outside along this axis (cannot happen for drawn regions)
                src.append(slice(0, 0))
                dst.append(slice(0, 0))
            else:
                src.append(slice(lo, hi))
                dst.append(slice(lo - start, hi - start))
        inside = all(s.start == 0 and s.stop == n for s, n in zip(dst, region.size, strict=True))
        return tuple(src), tuple(dst), inside

    def sample(
        self, rng: np.random.Generator | None = None, size: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One patch: image (1, z, y, x) float32 and labels (z, y, x) int64 of ``size`` (default: patch size)."""
        return self.crop(self.draw(rng, size))

    def _pad_value(self, case_index: int) -> float:
        # The case minimum is air after CT normalisation; computed once per case, only when padding is needed.
        if case_index not in self._pad_values:
            image = self.cases[case_index].image
            assert image is not None
            self._pad_values[case_index] = float(np.min(image))
        return self._pad_values[case_index]


def _count_voxels(cases: Sequence[CaseLike]) -> dict[int, int]:
    """Voxels per class over all cases (one pass over the labels)."""
    total = np.zeros(0, dtype=np.int64)
    for case in cases:
        counts = np.bincount(np.asarray(case.labels).reshape(-1))
        if len(counts) > len(total):
            total = np.pad(total, (0, len(counts) - len(total)))
        total[: len(counts)] += counts
    return {c: int(n) for c, n in enumerate(total) if c > 0 and n > 0}
