"""Tiny synthetic data and models for the gradient-health tests (seconds each)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.data import ArrayDataset
from cnnlab.train import TrainConfig


def synthetic_halves(count: int = 128, size: int = 8, seed: int = 0) -> ArrayDataset:
    """Synthetic two-class images: class 1 is bright on the left half, class 0 on the right."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = torch.randint(0, 80, (count, 3, size, size), generator=generator,
                           dtype=torch.uint8)
    half = size // 2
    images[labels == 1, :, :, :half] += 150
    images[labels == 0, :, :, half:] += 150
    return ArrayDataset(images, labels, ["right", "left"], source="synthetic halves",
                        mean=(0.5,) * 3, std=(0.25,) * 3)


def quick_config(**overrides) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "seed": 0,
            "fit_subset": 32, "threads": 1, "device": "cpu", "checkpoint_every": 1}
    base.update(overrides)
    return TrainConfig(**base)


class PoisonAfter(nn.Module):
    """Passes its input through until ``step`` training forward passes, then outputs NaN."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls >= self.step:
                return x * float("nan")
        return x


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NanGradientLinear(nn.Linear):
    """A linear layer whose input gradient is NaN: the layers before it get NaN gradients."""

    def forward(self, x):
        return super().forward(_NanGradient.apply(x))


@pytest.fixture
def halves() -> tuple[ArrayDataset, ArrayDataset]:
    return synthetic_halves(128, seed=0), synthetic_halves(64, seed=1)
