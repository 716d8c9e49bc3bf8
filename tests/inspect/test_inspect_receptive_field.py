"""Receptive fields against an independent measurement: the pixels that get a gradient.

For the centre unit of a layer, every input pixel with a non-zero gradient
must lie in the theoretical field. With positive weights and average pooling
in place of max pooling nothing can hide a path, so the two must be equal
(for fields without holes; with dilation or a stride larger than the field
below, the measured pixels must still span exactly the theoretical box).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.inspect import inspect
from tests.inspect._gradient import gradient_support, make_positive, theoretical_box

# ----------------------------------------------------------------------------
# Random stacks, with and without a two-branch block
# ----------------------------------------------------------------------------


class Branches(nn.Module):
    """Two convolutions of the same output size but different alignment, then add or concat."""

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d, merge: str) -> None:
        super().__init__()
        self.first, self.second, self.merge = first, second, merge

    def forward(self, x):
        if self.merge == "add":
            return self.first(x) + self.second(x)
        return torch.cat([self.first(x), self.second(x)], dim=1)


@st.composite
def convolution(draw, channels: int):
    kernel = draw(st.integers(1, 5))
    return nn.Conv2d(channels, channels, kernel, stride=draw(st.integers(1, 3)),
                     padding=draw(st.integers(0, 3)), dilation=draw(st.integers(1, 3)))


@st.composite
def pooling(draw):
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2))
    kind = draw(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]))
    return kind(kernel, stride, padding)


@st.composite
def branches(draw, channels: int):
    """Two branches whose outputs have the same size: 2p - d(k-1) is equal on both."""
    stride = draw(st.integers(1, 2))
    k1, d1, p1 = draw(st.integers(1, 5)), draw(st.integers(1, 2)), draw(st.integers(0, 3))
    k2, d2 = draw(st.integers(1, 5)), draw(st.integers(1, 2))
    twice_p2 = 2 * p1 - d1 * (k1 - 1) + d2 * (k2 - 1)
    assume(twice_p2 >= 0 and twice_p2 % 2 == 0)
    merge = draw(st.sampled_from(["add", "cat"]))
    block = Branches(nn.Conv2d(channels, channels, k1, stride, p1, d1),
                     nn.Conv2d(channels, channels, k2, stride, twice_p2 // 2, d2), merge)
    return block, (2 * channels if merge == "cat" else channels)


@st.composite
def stacks(draw):
    layers: list[nn.Module] = []
    channels = 2
    for _ in range(draw(st.integers(1, 5))):
        choice = draw(st.sampled_from(["conv", "conv", "pool", "branches", "relu"]))
        if choice == "conv":
            layers.append(draw(convolution(channels)))
        elif choice == "pool":
            layers.append(draw(pooling()))
        elif choice == "branches":
            block, channels = draw(branches(channels))
            layers.append(block)
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers), draw(st.integers(12, 64))


def _last_layer(model: nn.Sequential) -> str:
    return str(len(model) - 1)


def _reach(layer: nn.Module, interval: tuple[int, int]) -> tuple[int, int]:
    """Input indices read by output indices ``interval`` of one conv or pooling layer."""
    def first(value):
        return value[0] if isinstance(value, tuple) else value

    kernel, stride = first(layer.kernel_size), first(layer.stride)
    padding, dilation = first(layer.padding), first(getattr(layer, "dilation", 1))
    return (interval[0] * stride - padding,
            interval[1] * stride - padding + dilation * (kernel - 1))


def _touches_padding(model: nn.Sequential, result, unit: int, size: int) -> bool:
    """Does the unit read a padded position at any layer? Then the border cuts its field.

    Textbook fields (and the table) extend every layer's pattern into the
    padding, but padded values carry no pixel, so near the border the pixels
    that really reach a unit are fewer than the box; equality holds inside.
    """
    interval = (unit, unit)
    for index in reversed(range(len(model))):
        layer = model[index]
        size_in = size if index == 0 else result.row(str(index - 1)).output_shape[-1]
        if isinstance(layer, Branches):
            reaches = [_reach(layer.first, interval), _reach(layer.second, interval)]
        elif isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            reaches = [_reach(layer, interval)]
        else:
            continue
        if any(lo < 0 or hi > size_in - 1 for lo, hi in reaches):
            return True
        interval = (min(lo for lo, _ in reaches), max(hi for _, hi in reaches))
    return False


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks(), st.integers(0, 2**16))
def test_random_stacks_field_contains_every_pixel_with_a_gradient(stack, seed):
    model, size = stack
    shape = (2, size, size)
    torch.manual_seed(seed)
    try:
        result = inspect(model, shape)
    except CnnlabError:
        assume(False)  # the stack shrinks this input to nothing
    row = result.row(_last_layer(model))
    unit = row.centre_unit()
    box = theoretical_box(row.field_box(unit), shape)

    support = gradient_support(model, shape, _last_layer(model), unit, seed=seed)
    assert not (support & ~box).any(), f"pixels outside the field {row.field_box(unit)}"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks())
def test_random_stacks_field_equals_the_gradient_support_with_positive_weights(stack):
    model, size = stack
    shape = (2, size, size)
    make_positive(model)
    try:
        result = inspect(model, shape)
    except CnnlabError:
        assume(False)
    row = result.row(_last_layer(model))
    unit = row.centre_unit()
    field = row.field_box(unit)
    box = theoretical_box(field, shape)

    support = gradient_support(model, shape, _last_layer(model), unit)
    assert all(span.exact for span in row.spans)
    assert not (support & ~box).any()
    if _touches_padding(model, result, unit[0], size):
        return
    event("interior unit: equality checked")
    if all(span.dense for span in row.spans):
        assert torch.equal(support, box), f"field {field}"
    else:  # the extreme pixels of a field with holes are always seen
        rows = torch.nonzero(support.any(1)).flatten()
        columns = torch.nonzero(support.any(0)).flatten()
        assert (int(rows[0]), int(rows[-1])) == field[0]
        assert (int(columns[0]), int(columns[-1])) == field[1]


# ----------------------------------------------------------------------------
# Real architectures
# ----------------------------------------------------------------------------

def _vgg16_features() -> nn.Module:
    # VGG-16's convolutional part as torchvision builds it, without the 120M-parameter
    # classifier that only slows the test down.
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"])


# (name, builder, input, layers): layers after merges (residual adds, concatenations,
# dense blocks) and before them.
NETWORKS = [
    ("resnet18", torchvision.models.resnet18, (3, 64, 64),
     ["maxpool", "layer1", "layer2.0.conv1", "layer2"]),
    ("googlenet", lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False),
     (3, 64, 64), ["maxpool1", "inception3a", "inception3b"]),
    ("densenet121", torchvision.models.densenet121, (3, 48, 48),
     ["features.pool0", "features.denseblock1"]),
    ("vgg16", _vgg16_features, (3, 32, 32), ["4", "9", "16"]),
]


@pytest.mark.parametrize("name, build, shape, layers", NETWORKS, ids=[n[0] for n in NETWORKS])
@pytest.mark.parametrize("positive", [False, True], ids=["random", "positive"])
def test_torchvision_fields_match_gradients(name, build, shape, layers, positive):
    torch.manual_seed(0)
    model = build()
    if positive:
        make_positive(model)
    result = inspect(model, shape)
    for layer in layers:
        row = result.row(layer)
        unit = row.centre_unit()
        box = theoretical_box(row.field_box(unit), shape)
        support = gradient_support(model, shape, layer, unit)
        assert not (support & ~box).any(), f"{layer}: gradient outside the field"
        if positive:
            assert torch.equal(support, box), f"{layer}: field {row.field_box(unit)}"


def test_resnet_fields_have_the_published_sizes():
    # ResNet-18's last stage sees 435 pixels, ResNet-50's 427: the values the
    # receptive-field literature reports for these networks.
    with torch.device("meta"):
        resnet18 = torchvision.models.resnet18()
        resnet50 = torchvision.models.resnet50()
    assert inspect(resnet18, "3x224x224").row("layer4").receptive_field == (435, 435)
    assert inspect(resnet50, "3x224x224").row("layer4").receptive_field == (427, 427)
    layer1 = inspect(resnet18, "3x224x224").row("layer1")
    assert layer1.receptive_field == (43, 43) and layer1.jump == (4, 4)


# ----------------------------------------------------------------------------
# Geometry of single operations
# ----------------------------------------------------------------------------


def test_merging_paths_keeps_their_alignment():
    # A 1x1 path and a 3x3 path with no padding: the 1x1 output unit 0 reads pixel
    # 0, the 3x3 one pixels 0..2. Cropping the 3x3 output's border with slicing would
    # change alignment; here both start at pixel 0, so the union is 0..2, not -1..1.
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Conv2d(1, 1, 1)
            self.large = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.small(x)[:, :, :-2, :-2] + self.large(x)

    row = inspect(Model(), (1, 10, 10)).row("add")
    assert row.field_box((0, 0)) == [(0, 2), (0, 2)]
    assert row.receptive_field == (3, 3) and row.exact


def test_transposed_convolution_is_a_bound_that_contains_the_gradient():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1),
                          nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1))
    result = inspect(model, (1, 17, 17))
    row = result.row("1")
    assert row.jump == (1, 1) and not row.exact
    assert "bound" in row.note
    unit = row.centre_unit()
    support = gradient_support(make_positive(model), (1, 17, 17), "1", unit)
    assert not (support & ~theoretical_box(row.field_box(unit), (1, 17, 17))).any()


def test_adaptive_pooling_is_exact_for_multiples_and_a_bound_otherwise():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(4))
    exact = inspect(model, (1, 16, 16)).row("1")
    assert exact.exact and exact.receptive_field == (6, 6) and exact.jump == (4, 4)
    bound = inspect(model, (1, 15, 15)).row("1")
    assert not bound.exact and bound.jump == (Fraction(15, 4),) * 2
    unit = bound.centre_unit()
    support = gradient_support(make_positive(model), (1, 15, 15), "1", unit)
    assert not (support & ~theoretical_box(bound.field_box(unit), (1, 15, 15))).any()


def test_dilation_grows_the_field_and_marks_holes():
    row = inspect(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2)), (1, 20, 20)).row("0")
    assert row.receptive_field == (5, 5) and not any(span.dense for span in row.spans)
    row = inspect(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3, dilation=2)),
                  (1, 20, 20)).row("1")
    assert row.receptive_field == (7, 7) and all(span.dense for span in row.spans)


def test_a_gate_computed_from_the_whole_image_makes_the_field_global():
    # Squeeze-and-excitation: every output unit depends on every input pixel.
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            return x * x.mean((2, 3), keepdim=True).sigmoid()

    model = nn.Sequential(Gate())
    row = inspect(model, (2, 12, 12)).row("0")
    assert row.name == "0.mul" and row.exact
    assert row.field_box((0, 0)) == [(-1, 12), (-1, 12)]
    support = gradient_support(make_positive(model), (2, 12, 12), "0", (0, 0))
    assert support.all()


def test_one_dimensional_inputs_and_flatten_then_linear():
    model = nn.Sequential(nn.Conv1d(1, 4, 5, stride=2), nn.Flatten(), nn.Linear(4 * 6, 3))
    result = inspect(model, (1, 16))
    assert result.dimension_names == ("L",)
    assert result.row("0").receptive_field == (5,)
    flat = result.row("1")
    assert flat.spans[0].flat and flat.receptive_field == (15,)
    linear = result.row("2")
    assert linear.exact and linear.receptive_field == (15,)


def test_the_recorded_run_agrees_with_the_traced_graph():
    with torch.device("meta"):
        model = torchvision.models.googlenet(aux_logits=False, init_weights=False)
    traced = inspect(model, (3, 64, 64), trace="fx")
    recorded = inspect(model, (3, 64, 64), trace="run")
    assert traced.method == "torch.fx" and recorded.method == "run"
    assert [(r.name, r.spans, r.params, r.macs) for r in traced.rows] == \
        [(r.name, r.spans, r.params, r.macs) for r in recorded.rows]
