"""Small models and model files for tests (random weights: fine for plumbing, geometry and thresholds)."""

from __future__ import annotations

from pathlib import Path

import torch

from maskmed_core.checkpoint import save_model_file
from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.model import MaskMed, preset
from maskmed_core.plans import Plans


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


def full_disk_save_file(tensors, filename, metadata=None):
    """Stand-in for ``safetensors.torch.save_file`` that writes part of the file, then fails as a full disk does."""
    with open(filename, "wb") as handle:
        handle.write(b"partial")
    raise OSError(28, "No space left on device")
