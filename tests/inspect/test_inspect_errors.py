"""Bad inputs get errors that name the value, the layer or the close matches."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.inspect import find_module, inspect, load_model, parse_input_shape, parse_options


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None)


@pytest.mark.parametrize("trace", ["fx", "run"])
def test_an_input_too_small_names_the_layer_that_failed(trace):
    with pytest.raises(CnnlabError) as error:
        inspect(_meta("vgg16"), "3x16x16", name="vgg16", trace=trace)
    message = str(error.value)
    assert "vgg16 rejects input 3x16x16" in message
    assert "'features.30' (MaxPool2d)" in message and "Output size is too small" in message


def test_wrong_channels_name_the_first_convolution():
    with pytest.raises(CnnlabError, match=r"layer 'conv1' \(Conv2d\).*expects 3 input channels"):
        inspect(_meta("resnet18"), "1x64x64")


def test_a_functional_operation_that_fails_is_named_with_its_module():
    class Mismatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.left = nn.Conv2d(1, 2, 3)
            self.right = nn.Conv2d(1, 2, 5)

        def forward(self, x):
            return self.left(x) + self.right(x)

    with pytest.raises(CnnlabError, match="layer 'add' failed"):
        inspect(Mismatch(), "1x16x16")


def test_an_unknown_model_name_lists_close_matches():
    with pytest.raises(CnnlabError) as error:
        load_model("resnet19")
    message = str(error.value)
    assert "model 'resnet19' is unknown" in message and "Did you mean resnet18" in message
    with pytest.raises(CnnlabError, match="Did you mean .*mobilenet_v3_small"):
        load_model("mobilenet_v3_smal")


def test_factory_paths_explain_what_is_wrong(tmp_path):
    with pytest.raises(CnnlabError, match="cannot import"):
        load_model("no_such_package.models:build")
    with pytest.raises(CnnlabError, match="has no attribute 'resnet19'.*resnet18"):
        load_model("torchvision.models:resnet19")
    path = tmp_path / "tiny.py"
    path.write_text("from torch import nn\n"
                    "def build(width=4):\n    return nn.Conv2d(3, width, 3)\n"
                    "def broken():\n    return 3\n")
    assert load_model(f"{path}:build", {"width": 8}).out_channels == 8
    with pytest.raises(CnnlabError, match="returned int, not a torch.nn.Module"):
        load_model(f"{path}:broken")
    with pytest.raises(CnnlabError, match="rejected options"):
        load_model(f"{path}:build", {"depth": 2})


@pytest.mark.parametrize("text", ["3xNxN", "3x0x8", "", "3x-2", "three"])
def test_bad_input_shapes_are_named(text):
    with pytest.raises(CnnlabError, match="input"):
        parse_input_shape(text)


def test_bad_options_and_layer_names_are_named():
    with pytest.raises(CnnlabError, match="NAME=VALUE"):
        parse_options(["num_classes"])
    assert parse_options(["num_classes=10", "aux_logits=false", "name=x"]) == {
        "num_classes": 10, "aux_logits": False, "name": "x"}
    model = _meta("resnet18")
    with pytest.raises(CnnlabError, match="Did you mean layer3"):
        find_module(model, "layer33")
    with pytest.raises(CnnlabError, match="'layer9' is not in resnet18"):
        inspect(model, "3x32x32", name="resnet18").row("layer9")


def test_a_model_that_cannot_be_traced_is_recorded_from_a_run_instead():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            if x.sum() > 0:  # control flow on values defeats symbolic tracing
                return self.conv(x)
            return self.conv(self.conv(x))

    result = inspect(DataDependent(), "1x12x12")
    assert result.method == "run"
    assert "torch.fx could not trace" in result.notes[0]
    convolutions = [row for row in result.rows if row.type == "Conv2d"]
    assert [row.receptive_field for row in convolutions] == [(3, 3), (5, 5)]
    assert result.row("sum").receptive_field == (12, 12)  # the condition sees every pixel
    with pytest.raises(CnnlabError, match="torch.fx cannot trace"):
        inspect(DataDependent(), "1x12x12", trace="fx")


def test_operations_without_a_rule_are_named_not_skipped():
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.PixelShuffle(2), nn.Conv2d(1, 1, 3))
    result = inspect(model, "4x10x10")
    assert result.unanalysed == ["1 (PixelShuffle)"]
    assert result.row("1").field_unknown and result.row("2").field_unknown
    assert result.row("2").params == 10  # counts still work after it
