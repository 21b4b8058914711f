"""Weight averaging of model files of one training lineage: a "model soup" (Wortsman et al., 2022), or with two files
and weights (1 - a, a) the weight-space ensemble of WiSE-FT (Wortsman et al., CVPR 2022) between a model and its
fine-tuned copy.

Averaging only makes sense between networks that share their training history (one fine-tuned from the other, or both
from one file): their weights lie in one basin, and the average predicts like an ensemble at the cost of one network.
Two networks trained apart have unrelated weights and their average segments nothing; that cannot be checked here.
What is checked: the same network configuration (the training-only loss weights aside), preprocessing plans, classes
and mirror axes, so a prediction of the average means what each file's prediction meant.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from maskmed_core.checkpoint import ModelFile, ModelFileError, load_model_file

# ModelConfig fields that only steer training (the criterion's weights): files may differ there, the first one's go on.
_TRAINING_ONLY_CONFIG_FIELDS = ("loss",)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _differences(first: dict[str, Any], other: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries where two nested dicts differ."""
    names = []
    for key in sorted(set(first) | set(other)):
        a, b = first.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


def _architecture(model_file: ModelFile) -> dict[str, Any]:
    config = model_file.config.to_dict()
    for name in _TRAINING_ONLY_CONFIG_FIELDS:
        config.pop(name)
    return {
        "config": config,
        "plans": model_file.plans.to_dict(),
        "classes": [c.to_dict() for c in model_file.classes],
        "mirror_axes": list(model_file.mirror_axes),
    }


def check_averageable(paths: Sequence[Path], files: Sequence[ModelFile]) -> None:
    """Raise ModelFileError naming the first file whose network, plans, classes or mirror axes differ from the
    first file's (the fields that differ, up to five)."""
    reference = _architecture(files[0])
    for path, model_file in zip(paths[1:], files[1:], strict=True):
        differing = _differences(reference, _architecture(model_file))
        if differing:
            listed = ", ".join(differing[:5]) + (" ..." if len(differing) > 5 else "")
            raise ModelFileError(
                f"{path} cannot be averaged with {paths[0]}: they differ in {listed}. Only model files of one "
                "training lineage average (one fine-tuned from the other, or both from one file, with the same "
                "classes): fine-tune the other file from this one first"
            )


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """``weights`` scaled to sum to 1 (None: uniform). Raises ValueError unless there is one positive, finite
    weight per file."""
    if count < 1:
        raise ValueError("nothing to average")
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights given for {count} model files: give one per file, in their order")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"averaging weights must be positive numbers, got {', '.join(f'{w:g}' for w in weights)}")
    total = sum(weights)
    return [w / total for w in weights]


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None
                        ) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_dicts[i] per floating-point tensor, in float32, with w = normalized_weights(weights) (every
    state dict with the same keys and shapes). Other tensors (integer counters) must be equal: the first's."""
    weights = normalized_weights(weights, len(state_dicts))
    averaged = {}
    for key, first in state_dicts[0].items():
        if first.is_floating_point():
            total = torch.zeros_like(first, dtype=torch.float32)
            for state_dict, weight in zip(state_dicts, weights, strict=True):
                total.add_(state_dict[key].float(), alpha=weight)
            averaged[key] = total
        else:
            if any(not torch.equal(state_dict[key], first) for state_dict in state_dicts[1:]):
                raise ValueError(f"the integer tensor {key} differs between the state dicts: it cannot be averaged")
            averaged[key] = first
    return averaged


def _training_summary(model_file: ModelFile) -> dict[str, float]:
    """The step and validation mean Dice a file's training recorded, where it holds them as numbers. Only these
    scalars are copied: a file's own ``extra`` (a stranger's, perhaps) never nests into the average's, so averaging
    averages again cannot outgrow the JSON depth a model file may have."""
    training = model_file.extra.get("training")
    if not isinstance(training, dict):
        return {}
    return {key: training[key] for key in ("step", "mean_dice")
            if isinstance(training.get(key), (int, float)) and not isinstance(training.get(key), bool)}


def average_model_files(paths: Sequence[str | Path], weights: Sequence[float] | None = None) -> ModelFile:
    """The weighted average of two or more model files of one lineage (``weights``: one positive number per file,
    scaled to sum to 1; None: uniform), as a ModelFile with the first file's configuration. Its ``extra`` keeps the
    mirror axes and records, under "averaged_from", each file's name, SHA-256, weight, and training step and
    validation mean Dice where the file has them. Raises ModelFileError for an unusable file or files that differ
    (check_averageable), ValueError for fewer than two files or bad weights."""
    files_paths = [Path(p) for p in paths]
    if len(files_paths) < 2:
        raise ValueError(f"averaging needs at least two model files, got {len(files_paths)}")
    scaled = normalized_weights(weights, len(files_paths))
    files = [load_model_file(path) for path in files_paths]
    check_averageable(files_paths, files)
    state_dict = average_state_dicts([f.state_dict for f in files], scaled)
    sources = [{"file": path.name, "sha256": _sha256(path), "weight": weight, **_training_summary(model_file)}
               for path, model_file, weight in zip(files_paths, files, scaled, strict=True)]
    extra = {"mirror_axes": list(files[0].mirror_axes), "averaged_from": sources}
    return ModelFile(config=files[0].config, plans=files[0].plans, classes=files[0].classes, state_dict=state_dict,
                     extra=extra)
