"""nnU-Net ResEnc-style 3D CNN encoder."""

from __future__ import annotations

import torch
from torch import nn

from maskmed_core.model.blocks import ConvNormAct, ResidualBlock
from maskmed_core.model.config import EncoderConfig


class ResidualEncoder(nn.Module):
    """Stages of residual blocks; stage i pools by ``strides[i]`` in its first block.

    Input (B, in_channels, D, H, W); output a list with one (B, features[i], D_i, H_i, W_i) per stage,
    highest resolution first, where D_i = D / prod(strides[:i+1]).
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        first_kernel = config.kernel_sizes[0]
        self.stem = ConvNormAct(config.in_channels, config.features[0], first_kernel, config.strides[0])
        stages = []
        in_channels = config.features[0]
        for index, (channels, stride, kernel, blocks) in enumerate(
            zip(config.features, config.strides, config.kernel_sizes, config.blocks_per_stage, strict=True)
        ):
            stage_stride = (1, 1, 1) if index == 0 else stride  # the stem already applied strides[0]
            layers = [ResidualBlock(in_channels, channels, kernel, stage_stride)]
            layers += [ResidualBlock(channels, channels, kernel) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = channels
        self.stages = nn.ModuleList(stages)

    @property
    def out_channels(self) -> list[int]:
        return list(self.config.features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs
