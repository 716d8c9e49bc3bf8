"""Grad-CAM maps: shape, finite values, the right region on a known toy case; confused pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.diagnose.explain import (
    central_mass,
    confusion_matrix,
    grad_cam,
    grad_cam_available,
    last_conv_layer,
    most_confused_pairs,
    overlay_heatmaps,
)

BACKENDS = ["hooks", pytest.param("grad-cam", marks=pytest.mark.skipif(
    not grad_cam_available(), reason="the optional grad-cam package is not installed "
    "(pip install 'cnnlab[explain]')"))]


def colour_detector() -> nn.Module:
    """Class 0 = "red", class 1 = "blue": a 1x1 conv detects each colour, then average pooling.

    The class score is the mean of its colour channel, so the evidence for a
    class lies exactly where that colour is.
    """
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0  # red channel -> feature 0
        conv.weight[1, 2] = 1.0  # blue channel -> feature 1
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def red_top_left_blue_bottom_right(count: int = 2) -> torch.Tensor:
    images = torch.zeros(count, 3, 16, 16, dtype=torch.uint8)
    images[:, 0, :6, :6] = 255  # red square, top left
    images[:, 2, 10:, 10:] = 200  # blue square, bottom right
    return images


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_have_the_image_shape_finite_values_in_unit_range(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5))
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    result = grad_cam(model, images, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      backend=backend)
    assert result.maps.shape == (6, 20, 20)
    assert np.isfinite(result.maps).all()
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.layer == "3" and result.backend == backend
    assert result.target_classes == result.predictions


@pytest.mark.parametrize("backend", BACKENDS)
def test_toy_case_lights_the_region_of_the_explained_class(backend):
    model = colour_detector()
    images = red_top_left_blue_bottom_right()
    red = grad_cam(model, images, target_classes=[0, 0], backend=backend).maps
    blue = grad_cam(model, images, target_classes=[1, 1], backend=backend).maps
    for maps, (rows, cols) in ((red, (slice(0, 6), slice(0, 6))),
                               (blue, (slice(10, 16), slice(10, 16)))):
        inside = maps[:, rows, cols].mean()
        outside = (maps.sum(axis=(1, 2)).mean() - maps[:, rows, cols].sum(axis=(1, 2)).mean()
                   ) / (16 * 16 - 36)
        assert inside > 0.9 and outside < 0.1
        peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
        assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop


@pytest.mark.skipif(not grad_cam_available(), reason="the optional grad-cam package is not "
                    "installed (pip install 'cnnlab[explain]')")
def test_hooks_backend_agrees_with_the_grad_cam_package():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    package = grad_cam(model, images, backend="grad-cam")
    hooks = grad_cam(model, images, backend="hooks")
    assert np.allclose(package.maps, hooks.maps, atol=1e-4)


def test_grad_cam_restores_the_mode_and_leaves_no_gradients():
    model = colour_detector().train()
    grad_cam(model, red_top_left_blue_bottom_right(), backend="hooks")
    assert model.training and all(p.grad is None for p in model.parameters())


def test_bad_layer_and_models_without_convolutions_are_explained():
    with pytest.raises(CnnlabError, match="not in the model"):
        grad_cam(colour_detector(), red_top_left_blue_bottom_right(), layer="features.9")
    with pytest.raises(CnnlabError, match="no Conv2d"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_central_mass_of_an_even_map_is_the_central_area():
    even = np.ones((1, 32, 32))
    assert central_mass(even)[0] == pytest.approx(0.25)
    centred = np.zeros((1, 32, 32))
    centred[0, 12:20, 12:20] = 1
    assert central_mass(centred)[0] == pytest.approx(1.0)


def test_overlay_is_uint8_rgb_of_the_image_size():
    images = red_top_left_blue_bottom_right(3)
    out = overlay_heatmaps(images, np.random.default_rng(0).random((3, 16, 16)))
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 16, 16)


def test_confusion_matrix_and_most_confused_pairs_match_a_hand_count():
    classes = ["cat", "dog", "car"]
    targets = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    predictions = [0, 1, 1, 2, 1, 0, 1, 2, 2, 2]
    matrix = confusion_matrix(targets, predictions, 3)
    assert matrix.tolist() == [[1, 2, 1], [1, 2, 0], [0, 0, 3]]
    pairs = most_confused_pairs(matrix, classes, top=2)
    assert pairs[0] == {"true": "cat", "predicted": "dog", "count": 2, "share_of_true": 0.5,
                        "reverse_count": 1}
    assert (pairs[1]["true"], pairs[1]["predicted"]) == ("cat", "car")
    with pytest.raises(CnnlabError, match="class indices"):
        confusion_matrix([0, 3], [0, 1], 3)
