"""Parameter totals: equal to sum(p.numel()) and to torchinfo's counts for real architectures."""

from __future__ import annotations

import pytest
import torch
import torchinfo
import torchvision
from torch import nn

from cnnlab.inspect import inspect

# (torchvision name, factory options, input, device): small inputs keep torchinfo's real
# forward pass quick. VGG-16 is built on the meta device because initialising its
# 120M-parameter classifier takes seconds; models with batch norm run for real because
# batch norm on meta tensors is a slow Python decomposition.
ARCHITECTURES = [
    ("resnet18", {}, (3, 64, 64), "cpu"),
    ("resnet50", {}, (3, 64, 64), "cpu"),
    ("vgg16", {}, (3, 32, 32), "meta"),
    ("densenet121", {}, (3, 32, 32), "cpu"),
    ("mobilenet_v3_small", {}, (3, 64, 64), "cpu"),
    ("efficientnet_b0", {}, (3, 64, 64), "cpu"),
    ("googlenet", {"aux_logits": False, "init_weights": False}, (3, 64, 64), "cpu"),
]


def _meta_model(name: str, options: dict, device: str = "meta") -> nn.Module:
    with torch.device(device):
        return torchvision.models.get_model(name, weights=None, **options)


@pytest.mark.parametrize("name, options, shape, device", ARCHITECTURES,
                         ids=[a[0] for a in ARCHITECTURES])
def test_parameter_totals_match_numel_and_torchinfo(name, options, shape, device):
    model = _meta_model(name, options, device)
    result = inspect(model, shape)
    summary = torchinfo.summary(model, input_size=(1, *shape), device=device, verbose=0)

    numel = sum(p.numel() for p in model.parameters())
    assert result.total_params == numel == summary.total_params
    assert result.trainable_params == summary.trainable_params
    # Every parameter is used in the forward pass, and counted at exactly one row.
    assert sum(row.params for row in result.rows) == numel
    assert result.unused_params == 0
    assert result.unanalysed == []


def test_frozen_parameters_are_counted_apart_as_torchinfo_does():
    model = _meta_model("resnet18", {})
    for parameter in list(model.conv1.parameters()) + list(model.layer1.parameters()):
        parameter.requires_grad_(False)
    result = inspect(model, (3, 64, 64))
    summary = torchinfo.summary(model, input_size=(1, 3, 64, 64), device="meta", verbose=0)

    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert result.frozen_params == frozen == summary.total_params - summary.trainable_params
    assert result.row("conv1").frozen_params == 9408
    assert result.row("conv1").trainable_params == 0
    assert result.row("fc").trainable_params == 513_000


class _Shared(nn.Module):
    """One convolution applied twice, and a parameter used through a functional call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.unused = nn.Linear(10, 10)

    def forward(self, x):
        return self.conv(self.conv(x)) * self.scale


def test_a_shared_module_is_counted_once_and_unused_parameters_are_reported():
    result = inspect(_Shared(), (4, 8, 8))

    first, second = result.row("conv"), result.row("conv#2")
    assert first.params == 4 * (4 * 9 + 1) and second.params == 0
    assert "earlier row" in second.note
    assert result.row("mul").params == 4  # the functional use of self.scale
    assert result.unused_params == 110 and result.unused_modules == ["unused"]
    assert result.total_params == sum(p.numel() for p in _Shared().parameters())


def test_inspecting_restores_training_mode_and_leaves_weights_alone():
    model = torchvision.models.resnet18()
    model.train()
    before = model.conv1.weight.detach().clone()
    inspect(model, (3, 32, 32))
    assert model.training and model.layer1[0].bn1.training
    assert torch.equal(model.conv1.weight, before)
