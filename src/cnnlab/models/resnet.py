"""ResNets: torchvision's ImageNet family by name, and a small CIFAR ResNet for speed."""

from __future__ import annotations

import torchvision
from torch import nn

from cnnlab.models.deep import ResidualPair
from cnnlab.models.layers import zero_last_norm
from cnnlab.models.registry import register_model


def _torchvision_resnet(name: str, num_classes: int, in_channels: int, cifar_stem: bool
                        ) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if cifar_stem:
        # On 32x32 inputs the ImageNet stem (7x7 stride 2 + max pool) throws away 15/16 of
        # the pixels before the first block; a 3x3 stride-1 stem keeps them.
        model.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _register_torchvision(name: str) -> None:
    def factory(num_classes: int = 10, in_channels: int = 3, cifar_stem: bool = False
                ) -> nn.Module:
        return _torchvision_resnet(name, num_classes, in_channels, cifar_stem)

    factory.__doc__ = f"torchvision's {name} (random weights; see transfer for pretrained ones)."
    register_model(name)(factory)


for _name in ("resnet18", "resnet34", "resnet50"):
    _register_torchvision(_name)


class FastResNet(nn.Module):
    """A small residual network tuned for time-to-accuracy on CIFAR-10.

    A 3x3 stem, three stages (widths ``width``, 2x, 4x) of residual pairs
    with downsampling by stride, batch norm, global average pool, linear
    head. Residual branches start at zero (their last batch-norm scale is
    zero), which lets the deep stack train at a high learning rate from the
    first step.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32,
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, channels = [], width
        for stage, stage_width in enumerate((width, width * 2, width * 4)):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                block = ResidualPair(channels, stage_width, stride, "relu", "batch")
                zero_last_norm(block)
                layers.append(block)
                channels = stage_width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@register_model("fast_resnet")
def fast_resnet(num_classes: int = 10, in_channels: int = 3, width: int = 32,
                blocks_per_stage: int = 1) -> nn.Module:
    return FastResNet(num_classes, in_channels, width, blocks_per_stage)
