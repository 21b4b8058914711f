"""Small models and model files for tests (random weights: fine for plumbing, geometry and thresholds), and small
DICOM series."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
import torch

from maskmed_core.checkpoint import save_model_file
from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.model import MaskMed, preset
from maskmed_core.plans import Plans

# How long a test waits before it calls a child or a wait hung: long enough that a busy 2-core machine is never
# mistaken for a hang (a test must not depend on how fast the machine is), short enough that a hang ends the run.
HANG_SECONDS = 600


def tiny_model(num_classes: int = 3, kind: str = "decoupled", seed: int = 0) -> MaskMed:
    """A small-preset-shaped MaskMed with few channels (fast on CPU)."""
    torch.manual_seed(seed)
    config = preset("small", num_classes=num_classes)
    config.encoder.features = (8, 8, 16, 16, 16)
    config.encoder.blocks_per_stage = (1, 1, 1, 1, 1)
    config.transformer.d_model = 16
    config.transformer.ffn_dim = 16
    config.head.kind = kind
    config.head.hidden_dim = 16
    config.head.num_heads = 2
    config.head.ffn_dim = 16
    config.head.num_queries = 8
    return MaskMed(config)


def tiny_model_file(path: Path, num_classes: int = 3, patch_size=(32, 48, 48), kind: str = "decoupled") -> Path:
    plans = Plans(spacing=(3.0, 3.0, 3.0), patch_size=patch_size, overlap=0.5)
    return save_model_file(path, tiny_model(num_classes, kind), plans, list(AMOS15_CLASSES[:num_classes]))


def full_disk_write_bytes(path, data):
    """Stand-in for ``Path.write_bytes`` (how ``atomic.write_safetensors`` writes) that writes part of the data, then
    fails as a full disk does."""
    with open(path, "wb") as handle:
        handle.write(bytes(data)[:7])
    raise OSError(28, "No space left on device")


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class DicomSlice:
    """One slice of a synthetic DICOM series: its pixels ((rows, columns) int16 HU) and where it lies: Image Position
    (Patient) (mm, LPS), Image Orientation (Patient) (row then column cosines), Pixel Spacing (mm, both directions)."""

    pixels: np.ndarray
    position: tuple[float, ...]
    orientation: tuple[float, ...] = AXIAL
    pixel_spacing: float = 0.8


def write_dicom_series(folder: Path, slices: list[DicomSlice], uid: str, description: str) -> Path:
    """One CT DICOM file per slice (GDCM), named ``<description>_<k>.dcm``, each with its own geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, placed in enumerate(slices):
        image = sitk.GetImageFromArray(placed.pixels)
        image.SetSpacing((placed.pixel_spacing, placed.pixel_spacing))
        for tag, value in {
            "0008|0060": "CT",
            "0008|103e": description,
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in placed.position),
            "0020|0037": "\\".join(f"{c:.8f}" for c in placed.orientation),
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{description.replace(' ', '_')}_{k:02d}.dcm"))
        writer.Execute(image)
    return folder
