"""CT-like images synthesised from label maps (domain randomisation in the spirit of SynthSeg, made CT-aware).

SynthSeg (Billot et al., Medical Image Analysis 2023) trains on images drawn from label maps with randomised
contrast, resolution and deformation, and generalises to real scans it never saw. CT is easier than MR in one way
(Hounsfield units mean something) and harder in another (contrast phases, gas, bone), so here every draw is a
plausible CT rather than an arbitrary contrast:

1. a contrast phase (native, arterial, portal venous) and, per class, a mean HU drawn from that phase's prior
   (``maskmed_core/resources/ct_synthesis_priors.json``: fitted on our real image + label pairs, widened with
   literature ranges; ``python -m maskmed_core.training.fit_synthesis_priors`` rebuilds it);
2. structure inside classes: bone cortex around cancellous bone, kidney cortex and medulla (they enhance
   differently in the arterial phase), bowel and stomach with gas and fluid inside an enhancing wall, lungs with
   vessels, unlabelled tissue inside the body as a fat / soft-tissue mixture, air outside the body hull;
3. texture: per-class smooth random fields;
4. image formation: a slow bias field, partial-volume blur of a random in-plane resolution and slice thickness,
   correlated noise, and sometimes a field-of-view cut (the scan ending inside the patch, or a round in-plane
   field of view), where the labels are cut too (a real scan has no labels outside its field of view).

Input: a "tissue" map on the model grid, (z, y, x) integers: 0 = air outside the body, 1..252 = the label values
of the source label map (TotalSegmentator v2 ids; the priors name their classes), 253 = subcutaneous fat, 254 =
body wall, 255 = inside the body but unlabelled. ``body_tissue_map`` makes it from a label map. Geometry (affine,
elastic) is varied by the training augmentation before synthesis (``Augmenter``: the tissue map moves with the
labels, the image is drawn afterwards).

Everything is torch (CPU or GPU) and a pure function of the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

AIR = 0
SUBCUTANEOUS_FAT = 253
BODY_WALL = 254
BODY = 255
MAX_SOURCE_VALUE = 252
PHASES = ("native", "arterial", "portal")
PHASE_PROBABILITIES = (0.3, 0.2, 0.5)
PRIORS_FILE = Path(__file__).resolve().parents[1] / "resources" / "ct_synthesis_priors.json"
HU_MIN, HU_MAX = -1024.0, 3071.0

# Groups whose voxels get more than one constant (see _structure); every other group is mean + texture.
BONE, KIDNEY, BOWEL, LUNG, AIRWAY = "bone", "kidney", "bowel", "lung", "airway"
GROUPS = ("fat_soft", "lung", "airway", "bone", "cartilage", "muscle", "artery", "vein", "heart", "organ", "kidney",
          "fluid", "bowel", "nervous", "gland")


@dataclass(frozen=True)
class ClassPrior:
    """HU prior of one source class: per phase (median, spread) in HU; spread is the between-scan standard
    deviation of the class mean. ``texture`` is the within-class standard deviation (HU)."""

    name: str
    group: str
    native: tuple[float, float]
    arterial: tuple[float, float]
    portal: tuple[float, float]
    texture: float
    gas_fraction: float = 0.0  # bowel: expected share of gas in the lumen


@dataclass(frozen=True)
class SynthesisPriors:
    """The priors of every source class plus the body's fat and soft tissue, as loaded from the JSON file."""

    classes: dict[int, ClassPrior]
    fat: tuple[float, float]
    soft_tissue: tuple[float, float]
    source: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path | None = None) -> SynthesisPriors:
        return _load_priors(str(path or PRIORS_FILE))

    def table(self, phase: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(256,) float32 tensors: median HU, between-scan spread and texture of each tissue value in ``phase``."""
        median = torch.zeros(256)
        spread = torch.zeros(256)
        texture = torch.zeros(256)
        median[AIR], texture[AIR] = -1000.0, 5.0
        for value, prior in self.classes.items():
            m, s = getattr(prior, phase)
            median[value], spread[value], texture[value] = m, s, prior.texture
        return median, spread, texture

    def values_in(self, group: str) -> list[int]:
        return sorted(v for v, p in self.classes.items() if p.group == group)


@lru_cache(maxsize=4)
def _load_priors(path: str) -> SynthesisPriors:
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    classes = {}
    for key, entry in data["classes"].items():
        value = int(key)
        if not 1 <= value < BODY or entry["group"] not in GROUPS:
            raise ValueError(f"{path}: class {key} needs a value in 1..254 and a known group, got {entry['group']!r}")
        classes[value] = ClassPrior(
            name=str(entry["name"]), group=str(entry["group"]),
            native=tuple(entry["native"]), arterial=tuple(entry["arterial"]), portal=tuple(entry["portal"]),
            texture=float(entry["texture"]), gas_fraction=float(entry.get("gas_fraction", 0.0)),
        )
    body = data["body"]
    return SynthesisPriors(classes, tuple(body["fat"]), tuple(body["soft_tissue"]), data.get("source", {}))


# --------------------------------------------------------------------------------------------------------------
# the body hull (numpy / scipy, once per case when the cache is written)


def body_tissue_map(
    labels: np.ndarray, spacing_zyx: tuple[float, float, float] = (3.0, 3.0, 3.0), fat_mm: float = 15.0,
    wall_mm: float = 6.0,
) -> np.ndarray:
    """(z, y, x) uint8 tissue map from a label map of source values 0..252 (0 = unlabelled).

    Labelled voxels keep their value. Of the unlabelled ones: inside the body hull ``BODY``, a ring of ``wall_mm``
    along the hull's edge ``BODY_WALL`` (the abdominal and chest wall muscles no label covers), a layer of ``fat_mm``
    outside the hull ``SUBCUTANEOUS_FAT``, everything else ``AIR``. The hull of each axial slice is the convex hull
    of its labelled voxels (slices without labels stay air).
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    labels = np.asarray(labels)
    if int(labels.max(initial=0)) > MAX_SOURCE_VALUE:
        raise ValueError(f"source label values must be at most {MAX_SOURCE_VALUE}, got {int(labels.max())}")
    tissue = labels.astype(np.uint8)
    hull = np.zeros(labels.shape, dtype=bool)
    yy, xx = np.mgrid[0 : labels.shape[1], 0 : labels.shape[2]]
    pixels = np.stack((yy.ravel(), xx.ravel()), axis=1).astype(np.float64)
    for z in range(labels.shape[0]):
        points = np.argwhere(labels[z] > 0)
        if len(points) < 4:
            continue
        try:
            facets = ConvexHull(points).equations  # rows (a, b, c): inside where a*y + b*x + c <= 0
        except QhullError:  # all points on a line
            continue
        inside = (pixels @ facets[:, :2].T + facets[:, 2]).max(axis=1) <= 0.5
        hull[z] = inside.reshape(labels.shape[1:])
    in_plane = float(min(spacing_zyx[1], spacing_zyx[2]))
    structure = ndimage.generate_binary_structure(2, 1)[None]  # grow and shrink in-plane only
    wall_voxels = max(1, round(wall_mm / in_plane))
    fat_voxels = max(1, round(fat_mm / in_plane))
    core = ndimage.binary_erosion(hull, structure, iterations=wall_voxels)
    outer = ndimage.binary_dilation(hull, structure, iterations=fat_voxels)
    unlabelled = labels == 0
    tissue[outer & unlabelled] = SUBCUTANEOUS_FAT
    tissue[hull & unlabelled] = BODY_WALL
    tissue[core & unlabelled] = BODY
    return tissue


# --------------------------------------------------------------------------------------------------------------
# random fields (torch)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _smooth_field(shape: tuple[int, ...], cells: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Zero-mean, unit-std smooth random field of ``shape`` (z, y, x): Gaussian noise on a coarse grid of about
    ``cells`` points per axis, trilinearly upsampled (cheap: no full-size convolution)."""
    coarse = [max(2, min(s, cells)) for s in shape]
    noise = torch.randn(coarse, generator=generator, device="cpu").to(device)
    field = F.interpolate(noise[None, None], size=shape, mode="trilinear", align_corners=True)[0, 0]
    return (field - field.mean()) / field.std().clamp_min(1e-6)


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(volume: torch.Tensor, sigma_zyx: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of a (z, y, x) volume (sigma in voxels; < 0.1 skips that axis), edges replicated."""
    out = volume[None, None]
    for axis, sigma in enumerate(sigma_zyx):
        if sigma < 0.1:
            continue
        kernel = _gaussian_kernel(sigma, volume.device)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = kernel.numel() // 2
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0]


def _shell(mask: torch.Tensor) -> torch.Tensor:
    """Voxels of ``mask`` (z, y, x bool) with a 6-neighbour outside it: the one-voxel outer layer."""
    inside = -F.max_pool3d(-mask[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return mask & (inside < 0.5)


# --------------------------------------------------------------------------------------------------------------
# synthesis


@dataclass(frozen=True)
class Synthesised:
    """``image``: (z, y, x) float32 HU; ``field_of_view``: (z, y, x) bool, False where the simulated scan has no
    data (labels there must be set to background); ``phase``: the contrast phase drawn."""

    image: torch.Tensor
    field_of_view: torch.Tensor
    phase: str


def draw_phase(generator: torch.Generator) -> str:
    index = int(torch.multinomial(torch.tensor(PHASE_PROBABILITIES), 1, generator=generator))
    return PHASES[index]


def draw_class_means(priors: SynthesisPriors, phase: str, generator: torch.Generator) -> torch.Tensor:
    """(256,) mean HU per tissue value for one synthetic scan: the phase's median plus a between-scan draw."""
    median, spread, _ = priors.table(phase)
    return median + spread * torch.randn(256, generator=generator)


def synthesize_ct(
    tissue: torch.Tensor,
    priors: SynthesisPriors,
    generator: torch.Generator,
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0),
    field_of_view_cut_prob: float = 0.25,
) -> Synthesised:
    """One CT-like image from a (z, y, x) tissue map (see the module docstring), on the tissue map's device.

    spacing_mm: the grid's (z, y, x) spacing; blur widths and texture scales are drawn in millimetres.
    """
    if tissue.dim() != 3:
        raise ValueError(f"tissue must be (z, y, x), got {tuple(tissue.shape)}")
    device = tissue.device
    shape = tuple(tissue.shape)
    tissue = tissue.long()
    phase = draw_phase(generator)
    means = draw_class_means(priors, phase, generator).to(device)
    _, _, texture = priors.table(phase)
    texture = (texture * _uniform(generator, 0.5, 1.5)).to(device)
    image = means[tissue]
    # Texture: smooth-ish random variation inside every class (two scales).
    fine = _smooth_field(shape, max(4, min(shape) // 2), generator, device)
    coarse = _smooth_field(shape, 5, generator, device)
    image = image + texture[tissue] * (0.7 * fine + 0.5 * coarse)
    image = _structure(image, tissue, priors, phase, generator)
    image = _image_formation(image, generator, spacing_mm)
    field_of_view = _field_of_view(shape, generator, device, field_of_view_cut_prob)
    image = torch.where(field_of_view, image, torch.full_like(image, HU_MIN))
    return Synthesised(image.clamp(HU_MIN, HU_MAX).float(), field_of_view, phase)


def _structure(
    image: torch.Tensor, tissue: torch.Tensor, priors: SynthesisPriors, phase: str, generator: torch.Generator
) -> torch.Tensor:
    """What a constant per class cannot give: fat/soft tissue, bone cortex, kidney cortex, bowel content, lungs."""
    device = image.device
    shape = tuple(image.shape)
    # Body: subcutaneous fat (of varying thickness: its outer voxels sometimes become air), the body wall's
    # muscles, and inside, fat with soft-tissue strands and organs we have no label for.
    fat = priors.fat[0] + priors.fat[1] * float(torch.randn((), generator=generator))
    soft = priors.soft_tissue[0] + priors.soft_tissue[1] * float(torch.randn((), generator=generator))
    noise = 10.0 * _smooth_field(shape, max(4, min(shape) // 2), generator, device)
    subcutaneous = tissue == SUBCUTANEOUS_FAT
    for _ in range(int(torch.randint(0, 2, (), generator=generator))):
        air = tissue == AIR
        touching_air = F.max_pool3d(air[None, None].float(), (1, 3, 3), stride=1, padding=(0, 1, 1))[0, 0] > 0.5
        subcutaneous = subcutaneous & ~touching_air
        tissue = torch.where((tissue == SUBCUTANEOUS_FAT) & ~subcutaneous, torch.zeros_like(tissue), tissue)
    image = torch.where(tissue == AIR, torch.full_like(image, -1000.0) + 5.0 * noise / 10.0, image)
    image = torch.where(subcutaneous, fat + noise, image)
    image = torch.where(tissue == BODY_WALL, soft + 5.0 + noise, image)
    body = tissue == BODY
    if body.any():
        mixture = _smooth_field(shape, max(4, min(shape) // 2), generator, device)
        threshold = _uniform(generator, 0.0, 1.3)  # share of soft tissue: ~10 % to ~50 %
        share = torch.sigmoid((mixture - threshold) * 5.0)
        image = torch.where(body, fat + (soft - fat) * share + noise, image)
    # Bone: a dense cortex around cancellous bone.
    bone = torch.isin(tissue, torch.tensor(priors.values_in(BONE), device=device))
    if bone.any():
        cortex = _shell(bone)
        cortical = _uniform(generator, 500.0, 1100.0)
        image = torch.where(cortex, cortical + 0.15 * cortical * _smooth_field(shape, 8, generator, device), image)
    # Kidneys: cortex and medulla enhance at different times (corticomedullary phase = arterial).
    for value in priors.values_in(KIDNEY):
        kidney = tissue == value
        if not kidney.any():
            continue
        medulla = kidney & ~_shell(kidney)
        if phase == "arterial":
            image = torch.where(medulla, image - _uniform(generator, 60.0, 130.0), image)
        elif phase == "portal":
            image = torch.where(medulla, image - _uniform(generator, 0.0, 30.0), image)
    # Bowel and stomach: gas and fluid (sometimes oral contrast) inside an enhancing wall.
    oral_contrast = float(torch.rand((), generator=generator)) < 0.15
    content_hu = _uniform(generator, 150.0, 400.0) if oral_contrast else _uniform(generator, 0.0, 35.0)
    gas_field = _smooth_field(shape, max(4, min(shape) // 3), generator, device)
    for value in priors.values_in(BOWEL):
        bowel = tissue == value
        if not bowel.any():
            continue
        lumen = bowel & ~_shell(bowel)
        gas_share = min(0.9, priors.classes[value].gas_fraction * _uniform(generator, 0.3, 1.7))
        gas_threshold = torch.quantile(gas_field[lumen].float(), 1.0 - gas_share) if gas_share > 0 and lumen.any() \
            else torch.tensor(float("inf"), device=device)
        gas = lumen & (gas_field > gas_threshold)
        image = torch.where(lumen & ~gas, content_hu + 10.0 * gas_field, image)
        image = torch.where(gas, torch.full_like(image, -1000.0), image)
    # Lungs: parenchyma with vessels (bright specks), airways dark.
    lung = torch.isin(tissue, torch.tensor(priors.values_in(LUNG), device=device))
    if lung.any():
        specks = _smooth_field(shape, max(4, max(shape) // 1), generator, device)
        vessels = lung & (specks > _uniform(generator, 1.5, 2.2))
        image = torch.where(vessels, image + _uniform(generator, 300.0, 700.0), image)
    return image


def _image_formation(
    image: torch.Tensor, generator: torch.Generator, spacing_mm: tuple[float, float, float]
) -> torch.Tensor:
    """Bias field, partial-volume blur (random in-plane resolution and slice thickness), correlated noise."""
    device = image.device
    shape = tuple(image.shape)
    image = image + _uniform(generator, 0.0, 25.0) * _smooth_field(shape, 3, generator, device)
    # Resolution as a Gaussian point-spread function: FWHM = the simulated voxel size (mm).
    in_plane = _uniform(generator, 0.5, 2.0) * spacing_mm[1]
    thickness = _uniform(generator, 0.5, 2.5) * spacing_mm[0]
    fwhm_to_sigma = 1.0 / 2.3548
    sigma = (
        max(0.0, thickness / spacing_mm[0] - 1.0) * fwhm_to_sigma + 0.3,
        max(0.0, in_plane / spacing_mm[1] - 1.0) * fwhm_to_sigma + 0.3,
        max(0.0, in_plane / spacing_mm[2] - 1.0) * fwhm_to_sigma + 0.3,
    )
    image = gaussian_blur(image, sigma)
    noise = torch.randn(shape, generator=generator, device="cpu").to(device)
    correlation = _uniform(generator, 0.3, 1.0)
    noise = gaussian_blur(noise, (correlation, correlation, correlation))
    noise = noise / noise.std().clamp_min(1e-6)
    return image + _uniform(generator, 4.0, 30.0) * noise


def _field_of_view(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, probability: float
) -> torch.Tensor:
    """True where the simulated scan has data: sometimes it ends inside the patch (a z cut: thorax-only,
    abdomen-only, pelvis-only scans), sometimes a round in-plane field of view cuts the body's edge."""
    inside = torch.ones(shape, dtype=torch.bool, device=device)
    if float(torch.rand((), generator=generator)) < probability:
        cut = int(_uniform(generator, 0.15, 0.85) * shape[0])
        if float(torch.rand((), generator=generator)) < 0.5:
            inside[:cut] = False
        else:
            inside[cut:] = False
    if float(torch.rand((), generator=generator)) < probability:
        z, y, x = shape
        yy = torch.arange(y, device=device, dtype=torch.float32)[:, None] - _uniform(generator, 0.3, 0.7) * y
        xx = torch.arange(x, device=device, dtype=torch.float32)[None, :] - _uniform(generator, 0.3, 0.7) * x
        radius = _uniform(generator, 0.45, 0.8) * max(y, x)
        inside &= ((yy**2 + xx**2) <= radius**2)[None]
    return inside


# --------------------------------------------------------------------------------------------------------------
# contrast augmentation of real CTs


def change_contrast_phase(
    image_hu: torch.Tensor, tissue: torch.Tensor, priors: SynthesisPriors, generator: torch.Generator
) -> tuple[torch.Tensor, str]:
    """A real CT (z, y, x, HU) shown in another contrast phase: each enhancing class present (vessels, heart,
    kidneys, liver, spleen, pancreas, bowel wall, ...) is shifted so that its median becomes a value drawn from
    the new phase's prior; its texture is kept. Unlabelled tissue, bone, fat, air and fluids are left alone.
    Returns (image, phase)."""
    phase = draw_phase(generator)
    means = draw_class_means(priors, phase, generator)
    out = image_hu.clone()
    tissue = tissue.long()
    enhancing = ("artery", "vein", "heart", "organ", "kidney", "bowel", "gland", "muscle")
    present = torch.unique(tissue).tolist()
    for value in present:
        prior = priors.classes.get(int(value))
        if prior is None or prior.group not in enhancing:
            continue
        mask = tissue == value
        if int(mask.sum()) < 8:
            continue
        # The median of the class in this patch stands for its current enhancement; gas in bowel is excluded.
        voxels = image_hu[mask]
        voxels = voxels[voxels > -200]
        if voxels.numel() < 8:
            continue
        shift = float(means[int(value)]) - float(voxels.median())
        soft = mask & (image_hu > -200)
        out = torch.where(soft, out + shift, out)
    return out, phase
