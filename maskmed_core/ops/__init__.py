"""3D multi-scale deformable attention with a PyTorch reference and compiled CPU and CUDA backends."""

from maskmed_core.ops.dispatch import active_backend, available_backends, ms_deform_attn3d
from maskmed_core.ops.reference import ms_deform_attn3d_reference

__all__ = ["active_backend", "available_backends", "ms_deform_attn3d", "ms_deform_attn3d_reference"]
