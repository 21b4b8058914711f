"""The MaskMed model file: one self-describing, safe-to-load file per model.

Format: a safetensors file (tensors only: loading it cannot run code, unlike a pickle) whose string
metadata holds ``format`` = "maskmed-model", ``format_version``, and JSON for the model ``config``,
the preprocessing ``plans`` and the ``classes`` (label value, name, colour, terminology). A user needs
nothing else to run the model. The usual suffix is ``.maskmed``.

Weights are stored in half precision (``weights_dtype`` = "float16", or "bfloat16" when a weight is beyond
float16's range) and cast back to float32 on load; files without the field (float32) load as before. Half is
the default for every model file (training's best/last files, ``--export``, the bundled model) because inference
computes in float32 after the cast and the label map of the demo CT changes in under 0.01 % of voxels
(Testing/test_hostile_inputs.py), at half the download and disk size. The training state keeps full precision.

Loading trusts nothing in the file: the metadata is parsed with bounded size and depth, every field is
checked (maskmed_core.untrusted), the network's parameter count is computed from the config and compared with
the tensors the header lists and with the memory budget before any tensor is read, and NaN/Inf weights are
refused. Every refusal is a ModelFileError naming the field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskmed_core import __version__
from maskmed_core.atomic import write_safetensors
from maskmed_core.classes import SegmentClass, validate_classes
from maskmed_core.model import MaskMed, ModelConfig
from maskmed_core.plans import Plans
from maskmed_core.untrusted import (
    UnknownFieldsError,
    UntrustedValueError,
    check_int,
    check_sequence,
    load_json,
    memory_budget_bytes,
)

FORMAT_NAME = "maskmed-model"
FORMAT_VERSION = 1
_UPDATE = "update maskmed_core (pip install -U maskmed_core, or update the Slicer extension)"
REQUIRED_METADATA = ("format", "format_version", "config", "plans", "classes")
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT16_MAX = 65504.0


# A model file's "mirror_axes" (z, y, x) when it has none: every model before the field was trained with all three.
ALL_MIRROR_AXES = (0, 1, 2)


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

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """Axes (0 = z, 1 = y, 2 = x) the network was trained mirrored along, which test-time augmentation may mirror:
        ``extra["mirror_axes"]`` (checked when the file was loaded); files written before it was recorded: all three."""
        return tuple(self.extra.get("mirror_axes", ALL_MIRROR_AXES))


def save_model_file(
    path: str | Path,
    model: MaskMed,
    plans: Plans,
    classes: list[SegmentClass],
    extra: dict[str, Any] | None = None,
    weights_dtype: str = "half",
) -> Path:
    """Write a model file atomically (temporary name in the same folder, then rename).

    weights_dtype: "half" (default: float16, or bfloat16 when a weight's magnitude exceeds float16's 65504),
    "float16", "bfloat16" or "float32". Raises ValueError for non-finite weights (a diverged training).
    """
    validate_classes(classes)
    if len(classes) != model.config.num_classes:
        raise ValueError(f"{len(classes)} classes given for a network with {model.config.num_classes} classes")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"the network has NaN or infinite weights ({', '.join(bad[:3])}); not saved")
    if weights_dtype == "half":
        largest = max((float(v.abs().max()) for v in tensors.values() if v.is_floating_point() and v.numel()),
                      default=0.0)
        weights_dtype = "float16" if largest <= FLOAT16_MAX else "bfloat16"
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be 'half', {', '.join(map(repr, WEIGHT_DTYPES))}, got {weights_dtype!r}")
    dtype = WEIGHT_DTYPES[weights_dtype]
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path = Path(path)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "plans": json.dumps(plans.to_dict()),
        "classes": json.dumps([c.to_dict() for c in classes]),
        "extra": json.dumps(extra or {}),
        "weights_dtype": weights_dtype,
    }
    return write_safetensors(path, tensors, metadata)


@dataclass(frozen=True)
class _Header:
    """What a safetensors header says without reading any tensor: metadata, and (dtype, shape) per tensor."""

    metadata: dict[str, str]
    tensors: dict[str, tuple[str, tuple[int, ...]]]


def _read_header(path: Path) -> _Header:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {}
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                tensor_slice = handle.get_slice(key)
                tensors[key] = (str(tensor_slice.get_dtype()), tuple(int(n) for n in tensor_slice.get_shape()))
    except Exception as error:  # safetensors raises its own error types for anything that is not its format
        raise ModelFileError(
            f"{path} is not a MaskMed model file (it is not a safetensors file: {str(error)[:200]}); "
            "model files are made by `maskmed train`, pickled PyTorch checkpoints are refused for safety"
        ) from error
    return _Header(metadata, tensors)


def _check_mirror_axes(extra: Any) -> None:
    """``extra`` is an object whose "mirror_axes", if there, lists distinct axes among 0, 1, 2; UntrustedValueError."""
    if not isinstance(extra, dict):
        raise UntrustedValueError("extra", "expected an object")
    raw = extra.get("mirror_axes", list(ALL_MIRROR_AXES))
    try:
        axes = [check_int(a, "extra.mirror_axes", 0, 2) for a in check_sequence(raw, "extra.mirror_axes", 0, 3)]
    except UntrustedValueError:
        axes = None
    if axes is None or len(set(axes)) != len(axes):
        raise UntrustedValueError("extra.mirror_axes", f"{raw!r:.60}; expected distinct axes among 0, 1, 2")


def load_model_file(path: str | Path) -> ModelFile:
    """Read and check a model file. Never unpickles anything; nothing is allocated before the checks pass."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist: check the path, or omit --model for the default")
    header = _read_header(path)
    metadata = header.metadata
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is a safetensors file but not a MaskMed model file (no '{FORMAT_NAME}' format tag)"
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelFileError(f"{path} lacks model metadata ({', '.join(missing)}); re-export it from training")
    text = metadata["format_version"]
    # Versions count 1, 2, ...: a sign, a fraction, spaces or anything but plain digits is not one ever written.
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:
        raise ModelFileError(
            f"{path} has an invalid model file format version {text!r:.40} (versions are whole numbers from 1): "
            "the file is damaged or was not written by maskmed_core; re-export it from training"
        )
    version = int(text)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model file format {version}, newer than this maskmed_core reads ({FORMAT_VERSION}); "
            f"{_UPDATE}"
        )
    try:
        config = ModelConfig.from_json(metadata["config"])
        plans = Plans.from_dict(load_json(metadata["plans"], "plans"))
        class_list = load_json(metadata["classes"], "classes")
        if not isinstance(class_list, list):
            raise UntrustedValueError("classes", "expected a list")
        classes = [SegmentClass.from_dict(c, f"classes[{i}]") for i, c in enumerate(class_list)]
        validate_classes(classes)
        extra = load_json(metadata.get("extra", "{}"), "extra")
        _check_mirror_axes(extra)
        weights_dtype = metadata.get("weights_dtype", "float32")
        if weights_dtype not in WEIGHT_DTYPES:
            expected = ", ".join(WEIGHT_DTYPES)
            raise UntrustedValueError("weights_dtype", f"{weights_dtype!r:.40}; expected one of {expected}")
    except UnknownFieldsError as error:
        raise ModelFileError(
            f"{path} has settings this maskmed_core ({__version__}) does not know ({error}): it was written by a "
            f"newer maskmed_core; {_UPDATE}"
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path} has invalid model metadata ({error}); re-export it from training") from error
    if len(classes) != config.num_classes:
        raise ModelFileError(f"{path} lists {len(classes)} classes for a network with {config.num_classes}")
    _check_patch_fits_network(path, config, plans)
    _check_tensors_before_reading(path, config, header, weights_dtype)
    try:
        state_dict = load_file(str(path))
    except Exception as error:
        raise ModelFileError(f"{path} is damaged: its weights cannot be read ({str(error)[:200]})") from error
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(
                f"{path} holds NaN or infinite weights (in {key}): the training diverged or the file is damaged; "
                "use an earlier model file or train again"
            )
    # Half-precision files are cast back: every computation downstream is float32 on CPU.
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return ModelFile(config=config, plans=plans, classes=classes, state_dict=state_dict, extra=extra)


def _check_patch_fits_network(path: Path, config: ModelConfig, plans: Plans) -> None:
    """The patch must be divisible by the encoder's total stride, or every patch would fail in the network."""
    stride = config.total_stride
    if any(size % s for size, s in zip(plans.patch_size, stride, strict=True)):
        raise ModelFileError(
            f"{path} has invalid model metadata (plans.patch_size: {plans.patch_size} is not divisible by the "
            f"network's total stride {stride}); re-export it from training"
        )


def _check_tensors_before_reading(path: Path, config: ModelConfig, header: _Header, weights_dtype: str) -> None:
    """From the header alone: the network's size fits the memory budget and the file's tensors add up to it."""
    expected = config.estimated_parameters()
    needed = expected * (4 + WEIGHT_DTYPES[weights_dtype].itemsize)  # the file's tensors and their float32 copy
    budget = memory_budget_bytes()
    if needed > budget:
        raise ModelFileError(
            f"{path} asks for a network of {expected:,} parameters, which needs {needed / 2**30:.1f} GiB to load, "
            f"more than the {budget / 2**30:.1f} GiB memory budget; the file is damaged or not meant for this "
            "machine"
        )
    stored = sum(math.prod(shape) for _, shape in header.tensors.values())
    dtypes = {dtype for dtype, _ in header.tensors.values()}
    wanted = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[weights_dtype]
    if stored != expected or dtypes - {wanted}:
        raise ModelFileError(
            f"the weights in {path} do not match its network configuration ({stored:,} values of type "
            f"{', '.join(sorted(dtypes)) or 'none'} stored, {expected:,} of type {wanted} needed); the file is "
            "damaged or was assembled by hand: re-export it from training"
        )
