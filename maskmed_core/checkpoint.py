"""The MaskMed model file: one self-describing, safe-to-load file per model.

Format: a safetensors file (tensors only: loading it cannot run code, unlike a pickle) whose string
metadata holds ``format`` = "maskmed-model", ``format_version``, and JSON for the model ``config``,
the preprocessing ``plans`` and the ``classes`` (label value, name, colour, terminology). A user needs
nothing else to run the model. The usual suffix is ``.maskmed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskmed_core.atomic import atomic_path
from maskmed_core.classes import SegmentClass, validate_classes
from maskmed_core.model import MaskMed, ModelConfig
from maskmed_core.plans import Plans

FORMAT_NAME = "maskmed-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".maskmed"
REQUIRED_METADATA = ("format", "format_version", "config", "plans", "classes")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message says why and what to do."""


@dataclass
class ModelFile:
    """Everything a model file holds, ready to build the network."""

    config: ModelConfig
    plans: Plans
    classes: list[SegmentClass]
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)

    def build_model(self, device: torch.device | str = "cpu") -> MaskMed:
        """The network with these weights, in eval mode. Raises ModelFileError if they do not fit the config."""
        model = MaskMed(self.config)
        own = model.state_dict()
        missing = sorted(set(own) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(own))
        wrong_shape = sorted(
            f"{k} {tuple(self.state_dict[k].shape)} vs {tuple(own[k].shape)}"
            for k in set(own) & set(self.state_dict)
            if self.state_dict[k].shape != own[k].shape
        )
        if missing or unexpected or wrong_shape:
            details = "; ".join(
                f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                if items
            )
            raise ModelFileError(
                f"the weights in this model file do not match its network configuration ({details}); "
                "the file is damaged or was assembled by hand: re-export it from training"
            )
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def save_model_file(
    path: str | Path,
    model: MaskMed,
    plans: Plans,
    classes: list[SegmentClass],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model file atomically (temporary name in the same folder, then rename)."""
    from safetensors.torch import save_file

    validate_classes(classes)
    if len(classes) != model.config.num_classes:
        raise ValueError(f"{len(classes)} classes given for a network with {model.config.num_classes} classes")
    path = Path(path)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "plans": json.dumps(plans.to_dict()),
        "classes": json.dumps([c.to_dict() for c in classes]),
        "extra": json.dumps(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for anything that is not its format
        raise ModelFileError(
            f"{path} is not a MaskMed model file (it is not a safetensors file: {error}); "
            "model files are made by `maskmed train`, pickled PyTorch checkpoints are refused for safety"
        ) from error


def load_model_file(path: str | Path) -> ModelFile:
    """Read and check a model file. Never unpickles anything."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist: check the path, or omit --model for the default")
    metadata = _read_metadata(path)
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is a safetensors file but not a MaskMed model file (no '{FORMAT_NAME}' format tag)"
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelFileError(f"{path} lacks model metadata ({', '.join(missing)}); re-export it from training")
    try:
        version = int(metadata["format_version"])
    except ValueError as error:
        raise ModelFileError(f"{path} has an unreadable format version {metadata['format_version']!r}") from error
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model file format {version}, newer than this maskmed_core reads ({FORMAT_VERSION}); "
            "update maskmed_core (pip install -U maskmed_core, or update the Slicer extension)"
        )
    try:
        config = ModelConfig.from_json(metadata["config"])
        plans = Plans.from_dict(json.loads(metadata["plans"]))
        classes = [SegmentClass.from_dict(c) for c in json.loads(metadata["classes"])]
        validate_classes(classes)
        extra = json.loads(metadata.get("extra", "{}"))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path} has invalid model metadata ({error}); re-export it from training") from error
    if len(classes) != config.num_classes:
        raise ModelFileError(f"{path} lists {len(classes)} classes for a network with {config.num_classes}")
    try:
        state_dict = load_file(str(path))
    except Exception as error:
        raise ModelFileError(f"{path} is damaged: its weights cannot be read ({error})") from error
    return ModelFile(config=config, plans=plans, classes=classes, state_dict=state_dict, extra=extra)
