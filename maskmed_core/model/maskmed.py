"""The MaskMed network (and its point-wise conv head baseline), assembled from its parts.

    image (B, 1, D, H, W)
      -> ResidualEncoder                 features at every stage
      -> FullScaleDeformableTransformer  lowest stages attend across all stages (optional)
      -> PixelDecoder                    upsampling path with skips
      -> head (model.heads)              decoupled: QueryDecoder, per query class logits (C+1) and a mask
                                         conv: 1x1x1 conv, per voxel C+1 logits (nnU-Net style)
"""

from __future__ import annotations

import torch
from torch import nn

from maskmed_core.model.config import ModelConfig
from maskmed_core.model.encoder import ResidualEncoder
from maskmed_core.model.fsa_transformer import FullScaleDeformableTransformer
from maskmed_core.model.heads import Outputs, head_type
from maskmed_core.model.pixel_decoder import PixelDecoder


class MaskMed(nn.Module):
    """MaskMed network built from a ``ModelConfig``.

    ``forward(image)`` with image (B, in_channels, D, H, W), each of D, H, W divisible by
    ``config.total_stride``, returns the outputs of ``self.head`` (``DecoupledHead`` or ``ConvHead`` in
    ``model.heads``, chosen by ``config.head.kind``; their docstrings list the keys and shapes).

    The head's layers are attributes of this module (``mask_proj``, ``scale_proj``, ``query_decoder``, or
    ``seg_heads``) so that the state-dict keys of model files stay as they are; ``self.head`` is not a module
    (not in the state dict), it holds references to them.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = ResidualEncoder(config.encoder)
        channels = config.encoder.features
        self.transformer = (
            FullScaleDeformableTransformer(config.transformer, list(channels)) if config.transformer.enabled else None
        )
        head = head_type(config)
        self.pixel_decoder = PixelDecoder(config.encoder, stop_level=head.pixel_decoder_stop_level(config))
        self.head = head(config)
        for name, layer in self.head.layers.items():
            self.add_module(name, layer)

    def forward(self, image: torch.Tensor) -> Outputs:
        self._check_input(image)
        features = self.encoder(image)
        if self.transformer is not None:
            features = self.transformer(features)
        decoded = self.pixel_decoder(features)  # highest resolution (stop level) first
        return self.head.forward(decoded, self.pixel_decoder.stop_level)

    def _check_input(self, image: torch.Tensor) -> None:
        expected = self.config.encoder.in_channels
        if image.dim() != 5 or image.shape[1] != expected:
            raise ValueError(f"expected an image of shape (B, {expected}, D, H, W), got {tuple(image.shape)}")
        stride = self.config.total_stride
        if any(size % s for size, s in zip(image.shape[2:], stride, strict=True)):
            raise ValueError(
                f"patch size {tuple(image.shape[2:])} must be divisible by the network's total stride {stride}"
            )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
