"""Network configuration: plain dataclasses with a JSON round trip, and the `small` and `base` presets."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from maskmed_core.plans.stages import Triple, plan_stages


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
    """U-Net style upsampling path. ``mask_level`` 0 gives full-resolution mask features, 1 half, ...

    ``mask_refine_levels`` > 0 (decoupled head) refines the mask features by that many finer decoder stages: the
    features of ``mask_level`` are upsampled to each finer stage in turn and that stage's own features added through a
    zero-initialised 1x1x1 projection (an FPN-style sum), so masks come out at stage
    ``mask_level - mask_refine_levels`` while the query decoder still pools its attention masks from ``mask_level``.
    Zero-initialised, a model grown from one without refinement starts with its predictions (issue 25: finer masks
    for the adrenal glands, 1-2 voxels thick at 3 mm).
    """

    mask_level: int = 1
    mask_dim: int = 32
    num_feature_levels: int = 3
    mask_refine_levels: int = 0

    @property
    def mask_output_level(self) -> int:
        """The stage whose resolution the mask features (and the masks) have."""
        return self.mask_level - self.mask_refine_levels


# The head kinds (each a class in ``model.heads``, registered there under this name); the first is the default.
HEAD_KINDS = ("decoupled", "conv")


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
        """Types and ranges of every field (a config may come from a stranger's model file), then the
        constraints between fields. Raises UntrustedValueError (a ValueError) naming the field."""
        _check_fields(self)
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
        if not 0 <= self.pixel_decoder.mask_refine_levels <= self.pixel_decoder.mask_level:
            raise ValueError("pixel_decoder.mask_refine_levels must be between 0 and pixel_decoder.mask_level "
                             f"({self.pixel_decoder.mask_level}): the masks cannot be finer than full resolution")
        if self.head.kind not in HEAD_KINDS:
            raise ValueError(f"head.kind must be one of {', '.join(HEAD_KINDS)}, got {self.head.kind!r}")
        if self.transformer.d_model % 8:
            raise ValueError("transformer.d_model must be divisible by 8 (the query projection's group norm)")
        if self.head.hidden_dim % self.head.num_heads:
            raise ValueError("head.hidden_dim must be divisible by head.num_heads")

    def estimated_parameters(self) -> int:
        """The network's parameter count, computed from the config alone (no module is built, nothing allocated),
        so a model file asking for an absurd network is refused before any allocation. Exact for the current
        architecture (Testing/test_hostile_inputs.py compares it with the built network)."""
        return _parameter_count(self)

    @property
    def total_stride(self) -> Triple:
        """Product of all encoder strides: a patch size must be divisible by it (voxels, (d, h, w))."""
        return tuple(math.prod(s[axis] for s in self.encoder.strides) for axis in range(3))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """Every field, less those added since the first release (_LATER_FIELDS) while they hold their default, which
        is what a file without them means: a model file that does not use a later feature stays readable by earlier
        versions."""
        data = asdict(self)
        for path in _LATER_FIELDS:
            part, name = path.split(".")
            if data[part][name] == type(getattr(self, part)).__dataclass_fields__[name].default:
                del data[part][name]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Parse and validate; hostile JSON (huge, deeply nested, NaN) raises UntrustedValueError."""
        from maskmed_core.untrusted import load_json

        return cls.from_dict(load_json(text, "config"))


# Fields added after the first release ("part.name"): a file without one means the field's default (from_dict).
_LATER_FIELDS: tuple[str, ...] = ("pixel_decoder.mask_refine_levels",)

# Range of every numeric field: generous for real networks (the `base` preset is well inside), far below what
# would take a machine's memory. (kind, low, high); kind "int", "float", "bool" or "str".
_FIELD_RANGES: dict[str, tuple[str, float, float]] = {
    "num_classes": ("int", 1, 1000),
    "encoder.in_channels": ("int", 1, 16),
    "transformer.enabled": ("bool", 0, 1),
    "transformer.d_model": ("int", 8, 2048),
    "transformer.num_query_levels": ("int", 1, 8),
    "transformer.num_heads": ("int", 1, 64),
    "transformer.value_head_dim": ("int", 1, 256),
    "transformer.num_points": ("int", 1, 64),
    "transformer.num_layers": ("int", 0, 32),
    "transformer.ffn_dim": ("int", 1, 16384),
    "transformer.dropout": ("float", 0.0, 1.0),
    "pixel_decoder.mask_level": ("int", 0, 7),
    "pixel_decoder.mask_dim": ("int", 1, 2048),
    "pixel_decoder.num_feature_levels": ("int", 1, 8),
    "pixel_decoder.mask_refine_levels": ("int", 0, 7),
    "head.kind": ("str", 0, 0),
    "head.num_queries": ("int", 1, 1024),
    "head.hidden_dim": ("int", 1, 2048),
    "head.num_heads": ("int", 1, 64),
    "head.num_layers": ("int", 1, 32),
    "head.ffn_dim": ("int", 1, 16384),
    "head.dropout": ("float", 0.0, 1.0),
    "loss.class_weight": ("float", 0.0, 1e4),
    "loss.mask_bce_weight": ("float", 0.0, 1e4),
    "loss.mask_dice_weight": ("float", 0.0, 1e4),
    "loss.no_object_weight": ("float", 0.0, 1e4),
    "loss.num_points": ("int", 1, 1 << 20),
    "loss.oversample_ratio": ("float", 1.0, 100.0),
    "loss.importance_sample_ratio": ("float", 0.0, 1.0),
    "loss.deep_supervision": ("bool", 0, 1),
}
_MAX_STAGES = 8
_MAX_FEATURES = 2048
_MAX_BLOCKS = 16
_MAX_STRIDE = 4
_MAX_KERNEL = 7


def _check_fields(config: ModelConfig) -> None:
    """Type and range of every field; the encoder's per-stage tuples entry by entry."""
    from maskmed_core.untrusted import UntrustedValueError, check_int, check_number, check_sequence, check_text

    for part, kind in (("encoder", EncoderConfig), ("transformer", TransformerConfig),
                       ("pixel_decoder", PixelDecoderConfig), ("head", HeadConfig), ("loss", LossConfig)):
        if not isinstance(getattr(config, part), kind):
            raise UntrustedValueError(part, f"expected an object of {kind.__name__} fields")
    for path, (kind, low, high) in _FIELD_RANGES.items():
        owner, _, name = path.rpartition(".")
        value = getattr(getattr(config, owner) if owner else config, name)
        if kind == "int":
            check_int(value, path, int(low), int(high))
        elif kind == "float":
            check_number(value, path, low, high)
        elif kind == "bool" and not isinstance(value, bool):
            raise UntrustedValueError(path, f"expected true or false, got {value!r:.40}")
        elif kind == "str":
            check_text(value, path, 32)
    enc = config.encoder
    stages = len(check_sequence(enc.features, "encoder.features", 2, _MAX_STAGES))
    for name in ("strides", "kernel_sizes", "blocks_per_stage"):
        if len(check_sequence(getattr(enc, name), f"encoder.{name}", 1, _MAX_STAGES)) != stages:
            raise UntrustedValueError(f"encoder.{name}", f"{len(getattr(enc, name))} entries; encoder.features, "
                                      f"strides, kernel_sizes and blocks_per_stage must have one entry per stage "
                                      f"({stages})")
    for name, items in (("features", enc.features), ("blocks_per_stage", enc.blocks_per_stage)):
        for index, value in enumerate(items):
            check_int(value, f"encoder.{name}[{index}]", 1, _MAX_FEATURES if name == "features" else _MAX_BLOCKS)
    for name, items, high in (("strides", enc.strides, _MAX_STRIDE), ("kernel_sizes", enc.kernel_sizes, _MAX_KERNEL)):
        for index, triple in enumerate(items):
            check_sequence(triple, f"encoder.{name}[{index}]", 3, 3)
            for axis, value in enumerate(triple):
                check_int(value, f"encoder.{name}[{index}][{axis}]", 1, high)
                if name == "kernel_sizes" and value % 2 == 0:
                    raise UntrustedValueError(f"encoder.kernel_sizes[{index}][{axis}]", f"{value} is even; kernels "
                                              "must be odd so that a convolution keeps the size")


def _parameter_count(config: ModelConfig) -> int:
    """Parameters of MaskMed(config), module by module as the model/ files build them (see estimated_parameters)."""
    enc, tr, pixel, head = config.encoder, config.transformer, config.pixel_decoder, config.head
    features, stages = enc.features, len(enc.features)

    def conv_norm(cin: int, cout: int, kernel: Triple) -> int:  # Conv3d without bias + affine InstanceNorm
        return cin * cout * math.prod(kernel) + 2 * cout

    def linear(cin: int, cout: int) -> int:
        return cin * cout + cout

    total = conv_norm(enc.in_channels, features[0], enc.kernel_sizes[0])  # stem
    cin = features[0]
    for index in range(stages):
        cout, kernel = features[index], enc.kernel_sizes[index]
        stride = (1, 1, 1) if index == 0 else enc.strides[index]
        for block in range(enc.blocks_per_stage[index]):
            block_in = cin if block == 0 else cout
            total += conv_norm(block_in, cout, kernel) + conv_norm(cout, cout, kernel)
            if block == 0 and (block_in != cout or any(s != 1 for s in stride)):
                total += conv_norm(block_in, cout, (1, 1, 1))  # projected shortcut
        cin = cout
    if tr.enabled:
        value_dim = tr.num_heads * tr.value_head_dim
        query_levels = range(stages - tr.num_query_levels, stages)
        samples = tr.num_heads * stages * tr.num_points
        total += sum(linear(c, value_dim) for c in features) + stages * value_dim
        total += sum(linear(features[i], tr.d_model) + 2 * tr.d_model for i in query_levels)
        total += len(query_levels) * tr.d_model
        layer = (linear(tr.d_model, 3 * samples) + linear(tr.d_model, samples) + linear(value_dim, tr.d_model)
                 + linear(tr.d_model, tr.ffn_dim) + linear(tr.ffn_dim, tr.d_model) + 4 * tr.d_model)
        total += tr.num_layers * layer
        total += sum(linear(tr.d_model, features[i]) for i in query_levels)
    decoupled = head.kind == "decoupled"
    stop = pixel.mask_output_level if decoupled else 0
    for level in range(stages - 2, stop - 1, -1):
        f = features[level]
        total += features[level + 1] * f * math.prod(enc.strides[level + 1])  # transposed conv, no bias
        total += conv_norm(2 * f, f, enc.kernel_sizes[level]) + conv_norm(f, f, enc.kernel_sizes[level])
    if decoupled:
        dim = head.hidden_dim
        total += linear(features[pixel.mask_level], pixel.mask_dim)
        total += sum(linear(features[level], pixel.mask_dim) for level in range(stop, pixel.mask_level))
        total += sum(linear(features[stages - 1 - i], dim) for i in range(pixel.num_feature_levels))
        total += (2 * head.num_queries + pixel.num_feature_levels) * dim  # query_feat, query_pos, level_embed
        attention = 4 * dim * dim + 4 * dim  # nn.MultiheadAttention: in_proj (3 d x d) and out_proj, with biases
        layer = 2 * attention + 6 * dim + linear(dim, head.ffn_dim) + linear(head.ffn_dim, dim)
        total += head.num_layers * layer + 2 * dim + linear(dim, config.num_classes + 1)
        total += 2 * linear(dim, dim) + linear(dim, pixel.mask_dim)  # mask_embed MLP
    else:
        total += sum(linear(features[i], config.num_classes + 1) for i in range(stages - 1))
    return total


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        from maskmed_core.untrusted import UntrustedValueError

        raise UntrustedValueError(cls.__name__, f"expected an object of fields, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        from maskmed_core.untrusted import UnknownFieldsError

        raise UnknownFieldsError(cls.__name__, unknown)
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls, "__dataclass_fields__")[name].default_factory  # noqa: B009
        nested = default() if callable(default) else None
        if nested is not None and is_dataclass(nested) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(nested), value)
        else:
            kwargs[name] = _as_tuples(value)
    return cls(**kwargs)


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
    if head_kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {head_kind!r}; choose one of {', '.join(HEAD_KINDS)}")
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
