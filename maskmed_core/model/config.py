"""Network configuration: plain dataclasses with a JSON round trip, and the `small` and `base` presets."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

Triple = tuple[int, int, int]


@dataclass
class EncoderConfig:
    """nnU-Net ResEnc-style encoder. ``strides[0]`` is the stem's stride (normally 1: full resolution)."""

    in_channels: int = 1
    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[Triple, ...] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    kernel_sizes: tuple[Triple, ...] = ((3, 3, 3),) * 5
    blocks_per_stage: tuple[int, ...] = (1, 2, 2, 2, 2)


@dataclass
class TransformerConfig:
    """Full-Scale Aware Deformable Transformer.

    Queries are the tokens of the ``num_query_levels`` lowest-resolution encoder stages; values are the
    features of every encoder stage, full resolution included, projected to ``num_heads * value_head_dim``
    channels (kept small because the full-resolution level holds D*H*W values).
    """

    enabled: bool = True
    d_model: int = 128
    num_query_levels: int = 2
    num_heads: int = 4
    value_head_dim: int = 8
    num_points: int = 4
    num_layers: int = 3
    ffn_dim: int = 512
    dropout: float = 0.0


@dataclass
class PixelDecoderConfig:
    """U-Net style upsampling path. ``mask_level`` 0 gives full-resolution mask features, 1 half, ..."""

    mask_level: int = 1
    mask_dim: int = 32
    num_feature_levels: int = 3


@dataclass
class HeadConfig:
    """``decoupled``: shared object queries (mask + class each); ``conv``: point-wise 1x1x1 conv baseline."""

    kind: str = "decoupled"
    num_queries: int = 32
    hidden_dim: int = 128
    num_heads: int = 8
    num_layers: int = 3
    ffn_dim: int = 512
    dropout: float = 0.0


@dataclass
class LossConfig:
    """Mask2Former-style criterion weights and point sampling (decoupled head); Dice+CE for the conv head."""

    class_weight: float = 2.0
    mask_bce_weight: float = 5.0
    mask_dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 4096
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True


@dataclass
class ModelConfig:
    """Everything needed to build a MaskMed network. ``num_classes`` counts foreground classes only."""

    num_classes: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        enc = self.encoder
        stages = len(enc.features)
        if not (len(enc.strides) == len(enc.kernel_sizes) == len(enc.blocks_per_stage) == stages):
            raise ValueError(
                "encoder.features, strides, kernel_sizes and blocks_per_stage must have one entry per stage "
                f"(got {stages}, {len(enc.strides)}, {len(enc.kernel_sizes)}, {len(enc.blocks_per_stage)})"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        if not 1 <= self.transformer.num_query_levels <= stages:
            raise ValueError(f"transformer.num_query_levels must be between 1 and {stages}")
        if not 0 <= self.pixel_decoder.mask_level < stages:
            raise ValueError(f"pixel_decoder.mask_level must be between 0 and {stages - 1}")
        if not 1 <= self.pixel_decoder.num_feature_levels <= stages - self.pixel_decoder.mask_level:
            raise ValueError("pixel_decoder.num_feature_levels must fit between the mask level and the bottom")
        if self.head.kind not in ("decoupled", "conv"):
            raise ValueError(f"head.kind must be 'decoupled' or 'conv', got {self.head.kind!r}")
        if self.transformer.d_model % 8:
            raise ValueError("transformer.d_model must be divisible by 8 (the query projection's group norm)")
        if self.head.hidden_dim % self.head.num_heads:
            raise ValueError("head.hidden_dim must be divisible by head.num_heads")

    @property
    def total_stride(self) -> Triple:
        """Product of all encoder strides: a patch size must be divisible by it (voxels, (d, h, w))."""
        return tuple(math.prod(s[axis] for s in self.encoder.strides) for axis in range(3))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls, "__dataclass_fields__")[name].default_factory  # noqa: B009
        nested = default() if callable(default) else None
        if nested is not None and is_dataclass(nested) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(nested), value)
        else:
            kwargs[name] = _as_tuples(value)
    return cls(**kwargs)


def plan_stages(
    patch_size: Triple, spacing: tuple[float, float, float], num_stages: int
) -> tuple[tuple[Triple, ...], tuple[Triple, ...]]:
    """nnU-Net-like strides and kernel sizes for a patch (voxels, (d, h, w)) and spacing (mm, (d, h, w)).

    An axis is pooled at a stage while its current spacing is at most twice the finest current spacing
    and it still has at least 8 voxels, so thick-slice CTs get in-plane-only pooling first; the kernel
    is 1 along an axis whose spacing is still more than twice the finest (no mixing of distant slices).
    """
    sizes = list(patch_size)
    current = list(spacing)
    strides: list[Triple] = [(1, 1, 1)]
    kernels: list[Triple] = [tuple(1 if current[a] > 2 * min(current) else 3 for a in range(3))]  # type: ignore[misc]
    for _ in range(1, num_stages):
        finest = min(current)
        stride = tuple(2 if current[a] <= 2 * finest and sizes[a] >= 8 else 1 for a in range(3))
        for a in range(3):
            sizes[a] //= stride[a]
            current[a] *= stride[a]
        finest = min(current)
        strides.append(stride)  # type: ignore[arg-type]
        kernels.append(tuple(1 if current[a] > 2 * finest else 3 for a in range(3)))  # type: ignore[arg-type]
    return tuple(strides), tuple(kernels)


def preset(
    name: str,
    num_classes: int,
    in_channels: int = 1,
    patch_size: Triple | None = None,
    spacing: tuple[float, float, float] | None = None,
    head_kind: str = "decoupled",
    transformer_enabled: bool = True,
) -> ModelConfig:
    """``small`` (CPU, under 10 M parameters) or ``base`` (paper scale) with strides planned for the data.

    Without ``patch_size`` and ``spacing`` the strides are isotropic 2 (stem stride 1). ``head_kind``: "decoupled"
    (MaskMed) or "conv" (the point-wise conv head baseline); ``transformer_enabled=False`` removes the FSA
    transformer (the ablations), so that a config is complete when built.
    """
    if head_kind not in ("decoupled", "conv"):
        raise ValueError(f"unknown head kind {head_kind!r}; choose 'decoupled' or 'conv'")
    if name == "small":
        features: tuple[int, ...] = (16, 32, 64, 128, 192)
        blocks: tuple[int, ...] = (1, 2, 2, 2, 2)
        transformer = TransformerConfig(d_model=128, num_heads=4, value_head_dim=8, num_layers=3, ffn_dim=512)
        pixel = PixelDecoderConfig(mask_level=1, mask_dim=32, num_feature_levels=3)
        head = HeadConfig(num_queries=max(32, 2 * num_classes), hidden_dim=128, num_heads=8, num_layers=3)
    elif name == "base":
        features = (32, 64, 128, 256, 320, 320)
        blocks = (1, 3, 4, 6, 6, 6)
        transformer = TransformerConfig(d_model=256, num_heads=8, value_head_dim=8, num_layers=6, ffn_dim=1024)
        pixel = PixelDecoderConfig(mask_level=0, mask_dim=64, num_feature_levels=3)
        head = HeadConfig(
            num_queries=max(64, 2 * num_classes), hidden_dim=256, num_heads=8, num_layers=9, ffn_dim=1024
        )
    else:
        raise ValueError(f"unknown preset {name!r}; choose 'small' or 'base'")
    stages = len(features)
    if patch_size is not None and spacing is not None:
        strides, kernels = plan_stages(patch_size, spacing, stages)
    else:
        strides = ((1, 1, 1),) + ((2, 2, 2),) * (stages - 1)
        kernels = ((3, 3, 3),) * stages
    encoder = EncoderConfig(
        in_channels=in_channels, features=features, strides=strides, kernel_sizes=kernels, blocks_per_stage=blocks
    )
    head.kind = head_kind
    transformer.enabled = transformer_enabled
    return ModelConfig(
        num_classes=num_classes, encoder=encoder, transformer=transformer, pixel_decoder=pixel, head=head
    )
