"""Tiny real models and a synthetic three-colour dataset for the transfer tests.

The dataset is synthetic on purpose (named so): red, green and blue 8x8
images that any backbone separates, so a test runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab.models.backbones  # noqa: F401  (registers the "transfer" model for evaluate)


def colour_images(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 [N, H, W, 3] images; class c has a bright channel c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 90, size=(count, size, size, 3)).astype(np.uint8)
    for label in range(3):
        images[labels == label, :, :, label] += 150
    return images, labels


@pytest.fixture
def colour_npz(tmp_path) -> Path:
    """Synthetic three-colour data as an .npz: 48 train and 24 test images, 8x8."""
    x_train, y_train = colour_images(48, 8, seed=0)
    x_test, y_test = colour_images(24, 8, seed=1)
    path = tmp_path / "colours.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             classes=np.array(["red", "green", "blue"]))
    return path


@pytest.fixture
def resnet18_cifar_state() -> dict[str, torch.Tensor]:
    """A resnet18 (CIFAR stem) state dict with its classifier, as cnnlab would train it."""
    from cnnlab.models import build_model

    torch.manual_seed(3)
    model = build_model("resnet18", num_classes=7, cifar_stem=True)
    # Non-default batch-norm statistics, so a test can tell loaded from fresh.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.9, 1.1)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def resnet18_file(tmp_path, resnet18_cifar_state) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(resnet18_cifar_state, str(path))
    return path


@pytest.fixture(autouse=True)
def fresh_feature_memory():
    """Each test starts with an empty in-process feature cache."""
    from cnnlab.runs.transfer import FeatureCache

    FeatureCache.clear_memory()
    yield
    FeatureCache.clear_memory()
