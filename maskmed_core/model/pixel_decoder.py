"""U-Net style pixel decoder: upsampling path with encoder skips."""

from __future__ import annotations

import torch
from torch import nn

from maskmed_core.model.blocks import ConvNormAct
from maskmed_core.model.config import EncoderConfig


class PixelDecoder(nn.Module):
    """Upsamples from the deepest encoder stage to stage ``stop_level`` (0 = full resolution).

    Input: encoder (or transformer-enhanced) features, highest resolution first. Output: decoder
    features for stages ``stop_level .. last``, highest resolution first; entry i has
    ``encoder.features[stop_level + i]`` channels at that stage's resolution (the last entry is the
    encoder's own bottleneck).
    """

    def __init__(self, encoder: EncoderConfig, stop_level: int):
        super().__init__()
        self.stop_level = stop_level
        features = encoder.features
        self.upsample = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for level in range(len(features) - 2, stop_level - 1, -1):
            stride = encoder.strides[level + 1]
            kernel = encoder.kernel_sizes[level]
            self.upsample[str(level)] = nn.ConvTranspose3d(
                features[level + 1], features[level], stride, stride=stride, bias=False
            )
            self.blocks[str(level)] = nn.Sequential(
                ConvNormAct(2 * features[level], features[level], kernel),
                ConvNormAct(features[level], features[level], kernel),
            )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        outputs = [x]
        for level in range(len(features) - 2, self.stop_level - 1, -1):
            x = self.upsample[str(level)](x)
            x = self.blocks[str(level)](torch.cat((x, features[level]), dim=1))
            outputs.append(x)
        return outputs[::-1]
