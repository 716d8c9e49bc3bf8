"""Multiply-accumulates of convolution, transposed convolution and linear layers: closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.inspect import inspect

# (layer, input without batch, closed-form MACs of one sample)
CASES = [
    # conv: C_out * H_out * W_out * (C_in / groups) * kH * kW
    (nn.Conv2d(3, 16, 3), (3, 32, 32), 16 * 30 * 30 * 3 * 3 * 3),
    (nn.Conv2d(3, 16, 3, padding=1), (3, 32, 32), 16 * 32 * 32 * 3 * 9),
    (nn.Conv2d(8, 32, (3, 5), stride=2, padding=(1, 2)), (8, 20, 20), 32 * 10 * 10 * 8 * 15),
    (nn.Conv2d(8, 16, 3, groups=4, padding=1), (8, 10, 10), 16 * 10 * 10 * 2 * 9),
    (nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=False), (8, 10, 10), 8 * 10 * 10 * 1 * 9),
    (nn.Conv2d(4, 4, 3, dilation=2), (4, 12, 12), 4 * 8 * 8 * 4 * 9),
    (nn.Conv1d(2, 6, 5, stride=3), (2, 50), 6 * 16 * 2 * 5),
    (nn.Conv3d(1, 2, 3), (1, 6, 6, 6), 2 * 4 * 4 * 4 * 1 * 27),
    # transposed conv: each input value times (C_out / groups) * kernel taps
    (nn.ConvTranspose2d(8, 4, 2, stride=2), (8, 7, 7), 8 * 7 * 7 * 4 * 4),
    (nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, groups=2), (8, 5, 5), 8 * 5 * 5 * 2 * 9),
    # linear: in_features * out_features per position
    (nn.Linear(400, 120), (400,), 400 * 120),
    (nn.Linear(16, 8), (5, 16), 5 * 16 * 8),
]


@pytest.mark.parametrize("layer, shape, expected", CASES, ids=lambda v: repr(v)[:40])
def test_macs_match_the_closed_form(layer, shape, expected):
    result = inspect(nn.Sequential(layer), shape)
    assert result.rows[0].macs == expected
    assert result.total_macs == expected


def test_functional_convolution_and_linear_count_like_modules():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(16, 3, 3, 3))
            self.projection = nn.Parameter(torch.randn(10, 16))

        def forward(self, x):
            x = F.conv2d(x, self.weight, stride=2, padding=1)  # 16 x 16 x 16
            return F.linear(x.mean((2, 3)), self.projection)

    result = inspect(Functional(), (3, 32, 32))
    assert result.row("conv2d").macs == 16 * 16 * 16 * 3 * 9
    assert result.row("conv2d").params == 16 * 27
    assert result.row("linear").macs == 16 * 10
    assert result.total_macs == 16 * 16 * 16 * 27 + 160


def test_pooling_normalisation_and_activations_cost_no_macs():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2))
    assert inspect(model, (3, 16, 16)).total_macs == 0


def test_matrix_products_are_counted_and_unknown_layers_are_named():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            tokens = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
            scores = tokens @ tokens.transpose(1, 2)  # [B, HW, HW]
            mixed, _ = self.attention(tokens, tokens, tokens)
            return scores.mean() + mixed.mean()

    result = inspect(Attention(), (8, 4, 4))
    assert result.row("matmul").macs == 16 * 16 * 8
    assert "attention (MultiheadAttention)" in result.unanalysed
    assert "attention" in result.macs_unknown
