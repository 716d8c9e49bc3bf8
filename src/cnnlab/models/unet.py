"""A compact U-Net (Ronneberger et al., 2015) for binary segmentation.

Written here rather than taken from segmentation_models_pytorch because the
CPU budgets of cnnlab need a *tiny* network: smp builds its U-Net around an
ImageNet encoder (ResNet-18 is already 14 M parameters and expects 3 input
channels), while a loss comparison on 64x64 crops on two CPU cores needs tens
of thousands of parameters (unet_tiny has 0.12 M), a one-channel input and a
depth that matches the crop size. The structure is the paper's: per level two
3x3 conv + BatchNorm + ReLU blocks, 2x2 max-pool down, 2x2 transposed conv up, skip connections by
concatenation, a 1x1 conv to one logit per pixel. Padding keeps the output the
size of the input (the paper's valid convolutions shrink it), so H and W must
be divisible by ``2 ** depth``.

Registered names (for ``build_model``): ``unet`` (any width and depth);
``unet_tiny`` (base width 8, depth 3, 0.12 M parameters) for CPU studies and
tests; ``unet_small`` (16, 4; 1.9 M) for real runs. ``cnnlab.models`` registers
them when this module is imported (``import cnnlab.models.unet``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab._util import CnnlabError
from cnnlab.models.registry import register_model


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    out_channels: int = 1     # one logit per pixel for a binary mask
    base_width: int = 16      # channels at full resolution; doubled at each level down
    depth: int = 4            # number of 2x downsamplings
    dropout: float = 0.0      # dropout in the bottleneck only


class _DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice; padding 1 keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """Transposed-conv upsampling by 2, concatenate the skip, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = _DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)                                   # [B, out, 2h, 2w]
        return self.conv(torch.cat([skip, x], dim=1))    # [B, 2*out, 2h, 2w] -> [B, out, ...]


class UNet(nn.Module):
    """U-Net returning logits ``[B, out_channels, H, W]`` for inputs ``[B, in_channels, H, W]``.

    ``forward_features`` returns the decoder's last feature map (before the 1x1
    head), matching the features-then-head interface of the other models.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        if config.depth < 1 or config.base_width < 1:
            raise CnnlabError(f"U-Net needs depth >= 1 and base_width >= 1, got {config}")
        widths = [config.base_width * 2**level for level in range(config.depth + 1)]

        self.stem = _DoubleConv(config.in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _DoubleConv(widths[i], widths[i + 1]))
            for i in range(config.depth)
        )
        self.bottleneck_dropout = nn.Dropout2d(config.dropout)
        self.up = nn.ModuleList(
            _Up(widths[i + 1], widths[i]) for i in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, kernel_size=1)

    def forward_features(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        multiple = 2**self.config.depth
        if H % multiple or W % multiple:
            raise CnnlabError(
                f"U-Net of depth {self.config.depth} needs H and W divisible by {multiple}, got"
                f" {H}x{W}; resize or crop the images (e.g. size={H - H % multiple})"
            )
        skips = [self.stem(x)]                           # [B, w0, H, W]
        for down in self.down:
            skips.append(down(skips[-1]))                # [B, w_i, H/2^i, W/2^i]
        x = self.bottleneck_dropout(skips.pop())
        for up in self.up:
            x = up(x, skips.pop())
        return x                                         # [B, w0, H, W]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


@register_model("unet")
def unet(base_width: int = 16, depth: int = 4, in_channels: int = 1, out_channels: int = 1,
         dropout: float = 0.0) -> UNet:
    """A U-Net with the given base width (channels at full resolution) and depth."""
    return UNet(UNetConfig(in_channels=in_channels, out_channels=out_channels,
                           base_width=base_width, depth=depth, dropout=dropout))


@register_model("unet_tiny")
def unet_tiny(in_channels: int = 1, out_channels: int = 1) -> UNet:
    """Base width 8, depth 3 (121 k parameters): CPU studies and tests; inputs divisible by 8."""
    return unet(base_width=8, depth=3, in_channels=in_channels, out_channels=out_channels)


@register_model("unet_small")
def unet_small(in_channels: int = 1, out_channels: int = 1) -> UNet:
    """Base width 16, depth 4 (1.9 M parameters); inputs divisible by 16."""
    return unet(base_width=16, depth=4, in_channels=in_channels, out_channels=out_channels)

