"""ResNets: torchvision's ImageNet family by name, and a small CIFAR ResNet for speed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnlab._util import CnnlabError
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


def _check_image_size(x: torch.Tensor, stages: int) -> None:
    """Refuse images too small for pool_resnet, before a pooling layer fails obscurely."""
    # The 2x2 stem takes one pixel off each dimension and every stage halves it, rounding
    # down: at least one pixel must survive them all.
    smallest = 2 ** stages + 1
    if min(x.shape[-2:]) < smallest:
        raise CnnlabError(f"pool_resnet needs images of at least {smallest}x{smallest} pixels "
                          f"(a 2x2 stem, then {stages} halvings), got {x.shape[-2]}x{x.shape[-1]}; "
                          "use fast_resnet for smaller images")


# A leaf for torch.fx: `cnnlab inspect` traces the model symbolically, where shapes are unknown.
torch.fx.wrap("_check_image_size")


class PoolStage(nn.Module):
    """Convolution, 2x2 max pool, batch norm, GELU; then a residual 3x3 convolution.

    Pooling straight after the stage's first convolution, rather than
    striding inside a residual pair, halves the resolution before the second
    convolution runs, so most of the work happens on a quarter of the
    pixels. The residual branch's batch-norm scale starts at zero: the
    stage begins as conv-pool-norm and learns its second convolution.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.GELU()
        self.branch = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(cout), nn.GELU())
        nn.init.zeros_(self.branch[1].weight)

    def forward(self, x):
        x = self.act(self.norm(self.pool(self.conv(x))))
        return x + self.branch(x)


class PoolResNet(nn.Module):
    """A residual CIFAR-10 network for accuracy per minute: a whitening stem, three pool stages.

    The stem is a fixed 2x2 convolution that whitens image patches (its
    filters are the eigenvectors of the training patches' covariance, scaled
    by the inverse square root of their eigenvalues, each with its
    negation): call :meth:`fit_whitening` with normalised training images
    before training; until then it holds random filters. It is never
    trained, so its backward pass costs nothing. One :class:`PoolStage` per
    entry of ``widths`` (three by default: 31x31 down to 3x3 on CIFAR-10);
    a global max pool and a linear layer whose logits are scaled by
    ``logit_scale`` (a small scale keeps the first steps at a high learning
    rate from saturating the softmax) finish it.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, ...] = (64, 256, 256), logit_scale: float = 0.125
                 ) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise CnnlabError(f"pool_resnet widths must be positive channel counts, got {widths}")
        patch = in_channels * 4  # 2x2 patches
        self.whiten = nn.Conv2d(in_channels, 2 * patch, 2, bias=False)
        self.whiten.weight.requires_grad_(False)
        self.stem_act = nn.GELU()
        stages, channels = [], 2 * patch
        for width in widths:
            stages.append(PoolStage(channels, width))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def fit_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem's filters from ``images`` [N, C, H, W], a few thousand normalised."""
        if images.dim() != 4 or images.shape[1] * 4 * 2 != self.whiten.out_channels:
            raise CnnlabError(f"fit_whitening needs images [N, {self.whiten.in_channels}, H, W], "
                              f"got {tuple(images.shape)}")
        patches = F.unfold(images.float(), kernel_size=2)  # [N, C*4, L]
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
        filters = filters.reshape(-1, *self.whiten.weight.shape[1:]).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x):
        _check_image_size(x, len(self.stages))
        x = self.stages(self.stem_act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


@register_model("pool_resnet")
def pool_resnet(num_classes: int = 10, in_channels: int = 3,
                widths: str | tuple[int, ...] = (64, 256, 256), logit_scale: float = 0.125
                ) -> nn.Module:
    if isinstance(widths, str):  # "64,256,256" from the command line
        widths = tuple(int(w) for w in widths.split(","))
    return PoolResNet(num_classes, in_channels, tuple(widths), logit_scale)
