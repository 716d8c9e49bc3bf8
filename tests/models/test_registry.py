"""Models are built by name with options; their sizes match closed-form counts."""

import pytest
import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.models import available_models, build_model, count_parameters


def test_lenet5_has_the_closed_form_parameter_count():
    # conv 3->6 5x5, conv 6->16 5x5, 400->120, 120->84, 84->10 (weights + biases).
    expected = (6 * 3 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) \
        + (84 * 10 + 10)
    assert count_parameters(build_model("lenet5")) == expected == 62006


@pytest.mark.parametrize("name, options", [
    ("lenet5", {"activation": "tanh", "pooling": "avg"}),
    ("small_cnn", {"downsample": "stride", "widths": "16,32"}),
    ("small_cnn", {"downsample": "none", "norm": "none", "dropout": 0.5}),
    ("plain", {"depth": 20, "activation": "sigmoid"}),
    ("plain", {"depth": 21, "residual": True, "norm": "batch", "init": "kaiming"}),
    ("fast_resnet", {}),
    ("resnet18", {"cifar_stem": True}),
])
def test_every_registered_family_builds_and_classifies_cifar_sized_input(name, options):
    model = build_model(name, num_classes=7, **options)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_plain_depth_counts_convolutions():
    model = build_model("plain", depth=20)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    residual = build_model("plain", depth=21, residual=True)
    main_path = [m for name, m in residual.named_modules()
                 if isinstance(m, nn.Conv2d) and "shortcut" not in name]
    assert len(main_path) == 21


def test_large_initialisation_is_three_times_he_scale():
    model = build_model("plain", depth=5, init="large")
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 16)
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(3 / fan_in ** 0.5, rel=0.1)


def test_bad_names_and_options_are_clear_errors():
    with pytest.raises(CnnlabError, match="Did you mean lenet5"):
        build_model("lenet")
    with pytest.raises(CnnlabError, match="does not take option"):
        build_model("lenet5", depth=3)
    with pytest.raises(CnnlabError, match="activation 'swishy' is unknown"):
        build_model("lenet5", activation="swishy")
    with pytest.raises(CnnlabError, match="odd depth"):
        build_model("plain", depth=20, residual=True)
    assert "lenet5" in available_models()
