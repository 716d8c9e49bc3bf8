"""Deep plain and residual networks of chosen depth, for studying gradient flow.

``plain`` stacks ``depth`` 3x3 convolutions (in three stages of equal
length, widths 16/32/64, downsampling by stride at each new stage) with a
chosen activation, normalisation and initialisation; ``residual=True``
wraps each pair of convolutions in a skip connection, which makes it a
ResNet of the same depth. ``depth`` counts convolutions.
"""

from __future__ import annotations

from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.models.layers import initialise, make_activation, make_norm
from cnnlab.models.registry import register_model


class ConvUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activation: str, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, cout)
        self.act = make_activation(activation)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class ResidualPair(nn.Module):
    """Two 3x3 convolutions with a skip connection (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm1 = make_norm(norm, cout)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none")
        self.norm2 = make_norm(norm, cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), make_norm(norm, cout))
        self.act2 = make_activation(activation)

    def forward(self, x):
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class DeepNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 20,
                 activation: str = "relu", norm: str = "none", residual: bool = False,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if depth < 3:
            raise CnnlabError(f"--depth must be at least 3 convolutions, got {depth}")
        if residual and (depth - 1) % 2:
            raise CnnlabError(
                f"a residual net of depth {depth} needs an odd depth (a stem convolution plus "
                "pairs of convolutions), e.g. 21 or 31"
            )
        self.stem = ConvUnit(in_channels, widths[0], 1, activation, norm)
        units = (depth - 1) // 2 if residual else depth - 1
        per_stage = [units // 3 + (1 if i < units % 3 else 0) for i in range(3)]
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, per_stage)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                unit = ResidualPair if residual else ConvUnit
                blocks.append(unit(channels, width, stride, activation, norm))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@register_model("plain")
def plain(num_classes: int = 10, in_channels: int = 3, depth: int = 20,
          activation: str = "relu", norm: str = "none", init: str = "default",
          residual: bool = False) -> nn.Module:
    model = DeepNet(num_classes, in_channels, depth, activation, norm, residual)
    return initialise(model, init, activation)
