"""Small convolutional building blocks shared by the encoder and the pixel decoder."""

from __future__ import annotations

import torch
from torch import nn

Triple = tuple[int, int, int]


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that always takes oneDNN on CPU for float32.

    PyTorch falls back to its im2col ``slow_conv3d`` when N*C*D*H <= 20480 (batch 1, small deep
    stages), which is 3-4x slower than oneDNN for 3x3x3 kernels there; sliding-window inference runs
    exactly such patches. Same weights and state dict as ``nn.Conv3d``.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            input.device.type == "cpu"
            and input.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and torch.backends.mkldnn.is_available()
        ):
            return torch.mkldnn_convolution(
                input.contiguous(), weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def _padding(kernel: Triple) -> Triple:
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


class ConvNormAct(nn.Sequential):
    """Conv3d -> InstanceNorm3d (affine) -> LeakyReLU(0.01), as nnU-Net."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__(
            Conv3d(in_channels, out_channels, kernel, stride=stride, padding=_padding(kernel), bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class ResidualBlock(nn.Module):
    """ResEnc basic block: two convs with a (projected where needed) identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel, stride)
        self.conv2 = nn.Sequential(
            Conv3d(out_channels, out_channels, kernel, padding=_padding(kernel), bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.shortcut = nn.Sequential(
                nn.AvgPool3d(stride, stride) if any(s != 1 for s in stride) else nn.Identity(),
                Conv3d(in_channels, out_channels, 1, bias=False),
                nn.InstanceNorm3d(out_channels, affine=True),
            )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
