"""LeNet-5 and a configurable small CNN, the models of the training core."""

from __future__ import annotations

from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.models.layers import make_activation, make_norm
from cnnlab.models.registry import register_model

DOWNSAMPLING = ("max", "avg", "stride", "none")


def _pool(kind: str) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(2)
    if kind == "avg":
        return nn.AvgPool2d(2)
    raise CnnlabError(f"pooling {kind!r} is unknown; use max or avg")


class LeNet5(nn.Module):
    """LeNet-5 adapted to 32x32 colour images.

    conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> 120 -> 84 -> classes. With 3
    input channels and 10 classes it has 62,006 parameters.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, activation: str = "relu",
                 pooling: str = "max", input_size: int = 32) -> None:
        super().__init__()
        spatial = ((input_size - 4) // 2 - 4) // 2  # two valid 5x5 convs, two 2x2 pools
        if spatial < 1:
            raise CnnlabError(f"LeNet-5 needs inputs of at least 16x16, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), make_activation(activation), _pool(pooling),
            nn.Conv2d(6, 16, 5), make_activation(activation), _pool(pooling),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * spatial * spatial, 120), make_activation(activation),
            nn.Linear(120, 84), make_activation(activation),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))  # [B, C, H, W] -> [B, classes]


class SmallCNN(nn.Module):
    """Stages of 3x3 convolutions, each followed by a 2x downsampling, then a linear head.

    ``widths`` gives the channels of each stage, ``depth`` the convolutions
    per stage. ``downsample``: ``max``/``avg`` pooling, ``stride`` (the last
    convolution of a stage has stride 2) or ``none`` (no downsampling until
    the global average pool).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, ...] = (32, 64, 128), depth: int = 2,
                 activation: str = "relu", norm: str = "batch", dropout: float = 0.0,
                 downsample: str = "max") -> None:
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise CnnlabError(f"downsample {downsample!r} is unknown; use one of {DOWNSAMPLING}")
        if isinstance(widths, str):
            widths = tuple(int(w) for w in widths.split(","))
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            for index in range(depth):
                stride = 2 if downsample == "stride" and index == depth - 1 else 1
                layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1,
                                     bias=norm == "none"),
                           make_norm(norm, width), make_activation(activation)]
                channels = width
            if downsample in ("max", "avg"):
                layers.append(_pool(downsample))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 3, activation: str = "relu",
           pooling: str = "max", input_size: int = 32) -> nn.Module:
    return LeNet5(num_classes, in_channels, activation, pooling, input_size)


@register_model("small_cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 3, widths: str | tuple = (32, 64, 128),
              depth: int = 2, activation: str = "relu", norm: str = "batch",
              dropout: float = 0.0, downsample: str = "max") -> nn.Module:
    return SmallCNN(num_classes, in_channels, widths, depth, activation, norm, dropout,
                    downsample)
