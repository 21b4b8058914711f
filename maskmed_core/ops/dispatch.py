"""Choosing a backend for ``ms_deform_attn3d`` and wrapping the compiled ones in autograd."""

from __future__ import annotations

import os
import warnings

import torch
from torch.autograd.function import once_differentiable

from maskmed_core.ops.build import load_extension
from maskmed_core.ops.reference import ms_deform_attn3d_reference

BACKENDS = ("reference", "cpu", "cuda")
_warned: set[str] = set()


class _CompiledMSDeformAttn3d(torch.autograd.Function):
    """Autograd wrapper around an extension's ``forward`` / ``backward`` (first-order gradients)."""

    @staticmethod
    def forward(ctx, extension, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.extension = extension
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return extension.forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = ctx.extension.backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
        )
        return None, grad_value, None, None, grad_locations, grad_weights


def _forced_reference() -> bool:
    return os.environ.get("MASKMED_OPS", "").strip().lower() == "reference"


def _compiled_kind(device: torch.device) -> str | None:
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        return "cuda"
    return None


def available_backends() -> list[str]:
    """Backends usable in this process: always "reference", plus each compiled one that is built and loads."""
    backends = ["reference"]
    if load_extension("cpu") is not None:
        backends.append("cpu")
    if torch.cuda.is_available() and load_extension("cuda") is not None:
        backends.append("cuda")
    return backends


def active_backend(device: torch.device | str) -> str:
    """The backend ``ms_deform_attn3d(backend=None)`` uses for tensors on ``device``."""
    device = torch.device(device)
    kind = _compiled_kind(device)
    if _forced_reference() or kind is None:
        return "reference"
    if load_extension(kind) is None:
        if kind not in _warned:
            _warned.add(kind)
            warnings.warn(
                f"maskmed: the compiled deformable-attention op for {kind.upper()} is not built here; "
                "using the slower PyTorch reference. Run `maskmed build-ops` to build it.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "reference"
    return kind


def ms_deform_attn3d(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    """3D multi-scale deformable attention (the 3D form of Deformable DETR's op).

    Args:
        value: (N, S, M, Dh); S = sum_l D_l*H_l*W_l, each level flattened in (d, h, w) C order,
            levels concatenated.
        spatial_shapes: (L, 3) int64, (D_l, H_l, W_l).
        level_start_index: (L,) int64, offset of each level along S.
        sampling_locations: (N, Lq, M, L, P, 3) in [0, 1], last axis (x, y, z) = (w, h, d); 0 and 1 are
            the outer faces (``grid_sample`` with ``align_corners=False``); corners outside contribute zero.
        attention_weights: (N, Lq, M, L, P).
        backend: None picks the fastest one built for the tensors' device; "reference", "cpu" or "cuda"
            force one. ``MASKMED_OPS=reference`` in the environment forces the reference for None.

    Returns:
        (N, Lq, M*Dh), in the dtype of ``value``.
    """
    if backend is None:
        backend = active_backend(value.device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return ms_deform_attn3d_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if value.device.type != backend:
        raise ValueError(f"backend {backend!r} needs {backend} tensors, got tensors on {value.device}")
    extension = load_extension(backend)
    if extension is None:
        raise RuntimeError(f"the {backend} backend is not built; run `maskmed build-ops`")
    dtype = value.dtype
    if backend == "cpu" and dtype not in (torch.float32, torch.float64):
        # The CPU kernel computes in float32 or float64; half-precision inputs are widened and narrowed back.
        value, sampling_locations, attention_weights = (
            t.float() for t in (value, sampling_locations, attention_weights)
        )
    # Locations and weights travel in the accumulation type: float32 for half/bfloat16 values (a half
    # location would be off by a tenth of a voxel on a 128-wide level), else the value's own dtype.
    accumulate_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
    level_start_index = level_start_index.to(device=value.device, dtype=torch.int64).contiguous()
    output = _CompiledMSDeformAttn3d.apply(
        extension,
        value.contiguous(),
        spatial_shapes,
        level_start_index,
        sampling_locations.to(accumulate_dtype).contiguous(),
        attention_weights.to(accumulate_dtype).contiguous(),
    )
    return output.to(dtype)
