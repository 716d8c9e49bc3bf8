"""Keras ResNet-50 layer names map to torchvision modules with the same output shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.models.backbones import (
    KERAS_SHAPE_DIFFERENCES,
    _build_architecture,
    backbone_layer_names,
    keras_aliases,
    resolve_layer,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "transfer.md"


def keras_resnet50_shapes(size: int = 224) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every named Keras ResNet50 layer, from the published architecture.

    Written from Keras' definition, independently of the alias table: a 3-pixel
    zero pad and a 7x7 stride-2 valid convolution, a 1-pixel pad and a 3x3
    stride-2 valid max pool, then four stages of bottleneck blocks (filters
    64/128/256/512, 3/4/6/3 blocks) whose first block strides in its first
    1x1 convolution (stage 2: stride 1).
    """
    shapes = {}
    side = (size + 2 * 3 - 7) // 2 + 1
    for name in ("conv1_conv", "conv1_bn", "conv1_relu"):
        shapes[name] = (64, side, side)
    side = (side + 2 * 1 - 3) // 2 + 1
    shapes["pool1_pool"] = (64, side, side)
    for stage, (filters, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=2):
        side = (side - 1) // stride + 1
        for block in range(1, blocks + 1):
            prefix = f"conv{stage}_block{block}"
            if block == 1:
                shapes[f"{prefix}_0_conv"] = shapes[f"{prefix}_0_bn"] = (4 * filters, side, side)
            for part in ("1_conv", "1_bn", "1_relu", "2_conv", "2_bn", "2_relu"):
                shapes[f"{prefix}_{part}"] = (filters, side, side)
            for part in ("3_conv", "3_bn", "add", "out"):
                shapes[f"{prefix}_{part}"] = (4 * filters, side, side)
    shapes["avg_pool"] = (2048, 1, 1)  # Keras gives [N, 2048]; torchvision [N, 2048, 1, 1]
    return shapes


@pytest.fixture(scope="module")
def resnet50_outputs() -> dict[str, torch.Size]:
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _build_architecture("resnet50", {}).eval()
    nodes = sorted(set(keras_aliases("resnet50").values()))
    extractor = create_feature_extractor(model, {n: n for n in nodes})
    with torch.no_grad():
        outputs = extractor(torch.zeros(1, 3, 224, 224))
    return {name: value.shape[1:] for name, value in outputs.items()}


def test_every_keras_resnet50_layer_has_an_alias():
    assert set(keras_resnet50_shapes()) == set(keras_aliases("resnet50"))


def test_every_keras_block_name_maps_to_a_module_with_the_same_output_shape(resnet50_outputs):
    keras = keras_resnet50_shapes(224)
    aliases = keras_aliases("resnet50")
    for alias, module in aliases.items():
        if alias in KERAS_SHAPE_DIFFERENCES:
            continue
        assert tuple(resnet50_outputs[module]) == keras[alias], (alias, module)


def test_only_the_documented_strided_convolutions_differ_and_by_exactly_2x(resnet50_outputs):
    keras = keras_resnet50_shapes(224)
    aliases = keras_aliases("resnet50")
    differing = {a for a, m in aliases.items() if tuple(resnet50_outputs[m]) != keras[a]}
    assert differing == KERAS_SHAPE_DIFFERENCES
    for alias in differing:
        channels, height, width = keras[alias]
        assert tuple(resnet50_outputs[aliases[alias]]) == (channels, 2 * height, 2 * width)


def test_conv3_block4_out_is_layer2_3_with_28x28x512_at_224(resnet50_outputs):
    assert resolve_layer("resnet50", "conv3_block4_out") == "layer2.3"
    assert tuple(resnet50_outputs["layer2.3"]) == (512, 28, 28)


@pytest.mark.parametrize("name, blocks", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_basic_block_resnets_name_every_block_output(name, blocks):
    aliases = keras_aliases(name)
    expected = {f"conv{s + 2}_block{b + 1}_out": f"layer{s + 1}.{b}"
                for s, count in enumerate(blocks) for b in range(count)}
    assert expected.items() <= aliases.items()
    assert not any(alias.endswith("_1_conv") for alias in aliases)  # no bottleneck there


def test_the_docs_table_lists_every_resnet50_alias():
    text = DOCS.read_text()
    for alias, module in keras_aliases("resnet50").items():
        assert f"| `{alias}` | `{module}` |" in text, alias


@pytest.mark.parametrize("backbone, layer, message", [
    ("resnet50", "conv3_block4_ou", "Did you mean conv3_block4_out"),
    ("resnet18", "conv3_block4_out", "is not a layer of resnet18"),  # resnet18 has 2 blocks
    ("resnet50", "conv1_pad", "no torchvision counterpart"),
    ("resnet18", "fc", "is not a layer of resnet18"),
])
def test_bad_layer_names_say_what_to_use(backbone, layer, message):
    with pytest.raises(CnnlabError, match=message):
        resolve_layer(backbone, layer)


def test_torchvision_node_names_pass_through():
    assert resolve_layer("resnet50", "layer2.0.relu_1") == "layer2.0.relu_1"
    assert resolve_layer("resnet18", None) == "layer4"
    assert resolve_layer("fast_resnet", "blocks.1") == "blocks.1"


def test_layer_listing_gives_names_aliases_and_shapes():
    layers = backbone_layer_names("resnet18", 32, backbone_options={"cifar_stem": True})
    by_name = {layer.name: layer for layer in layers}
    assert by_name["layer2.1"].alias == "conv3_block2_out"
    assert by_name["layer2.1"].shape == (128, 16, 16)
    assert by_name["layer4.1"].shape == (512, 4, 4)
    assert [layer.name for layer in layers][:4] == ["conv1", "bn1", "relu", "maxpool"]
