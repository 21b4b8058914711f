"""The MaskMed network (and its point-wise conv head baseline), assembled from its parts.

    image (B, 1, D, H, W)
      -> ResidualEncoder                 features at every stage
      -> FullScaleDeformableTransformer  lowest stages attend across all stages (optional)
      -> PixelDecoder                    upsampling path with skips
      -> decoupled head: QueryDecoder    per query: class logits (C+1) and a mask embedding
         or conv head: 1x1x1 conv        per voxel: C+1 logits (nnU-Net style)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskmed_core.model.blocks import Conv3d
from maskmed_core.model.config import ModelConfig
from maskmed_core.model.encoder import ResidualEncoder
from maskmed_core.model.fsa_transformer import FullScaleDeformableTransformer
from maskmed_core.model.pixel_decoder import PixelDecoder
from maskmed_core.model.query_decoder import QueryDecoder
from maskmed_core.model.semantic import semantic_probabilities_from_queries

Outputs = dict[str, object]


class MaskMed(nn.Module):
    """MaskMed network built from a ``ModelConfig``.

    ``forward(image)`` with image (B, in_channels, D, H, W), each of D, H, W divisible by
    ``config.total_stride``, returns a dict:

    decoupled head:
        "pred_logits": (B, Q, C+1) class logits of the last decoder layer (last column: no object),
        "pred_mask_embed": (B, Q, E) mask embeddings of the last layer,
        "mask_features": (B, E, D_m, H_m, W_m) per-voxel mask features (full or reduced resolution),
        "aux_outputs": list of {"pred_logits", "pred_mask_embed"} of the earlier layers (deep supervision).
    conv head:
        "seg_logits": (B, C+1, D, H, W) (channel 0: background),
        "aux_seg_logits": list of lower-resolution logits of the decoder stages (deep supervision).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = ResidualEncoder(config.encoder)
        channels = config.encoder.features
        self.transformer = (
            FullScaleDeformableTransformer(config.transformer, list(channels)) if config.transformer.enabled else None
        )
        decoupled = config.head.kind == "decoupled"
        pixel = config.pixel_decoder
        self.pixel_decoder = PixelDecoder(config.encoder, stop_level=pixel.mask_level if decoupled else 0)
        if decoupled:
            self.mask_proj = Conv3d(channels[pixel.mask_level], pixel.mask_dim, 1)
            # Feature scales for the query decoder: the lowest-resolution decoder outputs, lowest first.
            self.feature_levels = list(range(len(channels) - 1, len(channels) - 1 - pixel.num_feature_levels, -1))
            self.scale_proj = nn.ModuleList(Conv3d(channels[i], config.head.hidden_dim, 1) for i in self.feature_levels)
            self.query_decoder = QueryDecoder(config.head, config.num_classes, pixel.mask_dim, pixel.num_feature_levels)
        else:
            # One 1x1x1 conv per decoder stage above the bottleneck; index 0 is the full-resolution output.
            self.seg_heads = nn.ModuleList(
                Conv3d(channels[i], config.num_classes + 1, 1) for i in range(len(channels) - 1)
            )

    @property
    def decoupled(self) -> bool:
        return self.config.head.kind == "decoupled"

    def forward(self, image: torch.Tensor) -> Outputs:
        self._check_input(image)
        features = self.encoder(image)
        if self.transformer is not None:
            features = self.transformer(features)
        decoded = self.pixel_decoder(features)  # highest resolution (stop level) first
        if not self.decoupled:
            logits = [head(x) for head, x in zip(self.seg_heads, decoded, strict=False)]
            return {"seg_logits": logits[0], "aux_seg_logits": logits[1:]}
        stop = self.pixel_decoder.stop_level
        mask_features = self.mask_proj(decoded[0])
        scales = [proj(decoded[level - stop]) for proj, level in zip(self.scale_proj, self.feature_levels, strict=True)]
        predictions = self.query_decoder(scales, mask_features)
        class_logits, mask_embed = predictions[-1]
        return {
            "pred_logits": class_logits,
            "pred_mask_embed": mask_embed,
            "mask_features": mask_features,
            "aux_outputs": [{"pred_logits": c, "pred_mask_embed": m} for c, m in predictions[:-1]],
        }

    def _check_input(self, image: torch.Tensor) -> None:
        expected = self.config.encoder.in_channels
        if image.dim() != 5 or image.shape[1] != expected:
            raise ValueError(f"expected an image of shape (B, {expected}, D, H, W), got {tuple(image.shape)}")
        stride = self.config.total_stride
        if any(size % s for size, s in zip(image.shape[2:], stride, strict=True)):
            raise ValueError(
                f"patch size {tuple(image.shape[2:])} must be divisible by the network's total stride {stride}"
            )

    @staticmethod
    def mask_logits(outputs: Outputs, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """(B, Q, D_m, H_m, W_m) mask logits of the last layer, trilinearly resized to ``size`` if given."""
        logits = torch.einsum("bqe,bedhw->bqdhw", outputs["pred_mask_embed"], outputs["mask_features"])
        if size is not None and tuple(logits.shape[2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
        return logits

    def class_probabilities(self, outputs: Outputs, query_threshold: float = 0.0) -> torch.Tensor:
        """Per-class foreground probabilities at input resolution, (B, C, D, H, W), in [0, 1] (conv head)
        or [0, Q] (decoupled head, a sum over queries; see ``semantic_probabilities_from_queries``)."""
        if not self.decoupled:
            return outputs["seg_logits"].softmax(1)[:, 1:]  # type: ignore[attr-defined]  # Outputs values are typed object
        mask_features: torch.Tensor = outputs["mask_features"]  # type: ignore[assignment]
        size = self._input_size(mask_features)
        return semantic_probabilities_from_queries(
            outputs["pred_logits"], self.mask_logits(outputs, size), query_threshold  # type: ignore[arg-type]
        )

    def _input_size(self, mask_features: torch.Tensor) -> tuple[int, int, int]:
        level = self.config.pixel_decoder.mask_level
        factor = [1, 1, 1]
        for stride in self.config.encoder.strides[1 : level + 1]:
            factor = [f * s for f, s in zip(factor, stride, strict=True)]
        return tuple(n * f for n, f in zip(mask_features.shape[2:], factor, strict=True))  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
