"""Frozen and fine-tuned backbones: what learns, what stays, and the heads."""

from __future__ import annotations

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.data import ArrayDataset
from cnnlab.models.backbones import InputAdapter, build_transfer_model
from cnnlab.train import TrainConfig, Trainer


def colour_dataset(count: int = 24, size: int = 8) -> ArrayDataset:
    from tests.transfer.conftest import colour_images

    images, labels = colour_images(count, size, seed=0)
    return ArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                        torch.from_numpy(labels), ["red", "green", "blue"])


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict, prefix: str = "") -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def train_briefly(model, data) -> None:
    # A high learning rate and an augmentation-free live loop: the backbone runs every step.
    Trainer(model, TrainConfig(epochs=2, batch_size=8, lr=1e-2, threads=1), train=data).fit()


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics(resnet18_file):
    model = build_transfer_model("resnet18", str(resnet18_file), num_classes=3, freeze=True,
                                 backbone_options={"cifar_stem": True})
    before = snapshot(model)
    train_briefly(model, colour_dataset())
    after = snapshot(model)
    assert changed(before, after, "features.") == set()
    assert any(k.endswith("running_mean") for k in before)  # the statistics were compared
    assert changed(before, after, "head.") == {"head.weight", "head.bias"}


def test_train_mode_keeps_the_frozen_backbone_in_eval_mode(resnet18_file):
    model = build_transfer_model("resnet18", str(resnet18_file), num_classes=3, freeze=True,
                                 backbone_options={"cifar_stem": True})
    model.train()
    assert model.head.training
    assert not any(m.training for m in model.features.modules())
    assert not any(p.requires_grad for p in model.features.parameters())


def test_fine_tuning_from_a_stage_trains_that_stage_on_and_keeps_the_rest(resnet18_file):
    model = build_transfer_model("resnet18", str(resnet18_file), num_classes=3,
                                 fine_tune_from="conv4", backbone_options={"cifar_stem": True})
    before = snapshot(model)
    model.train()
    assert not model.features.get_submodule("layer2.1.bn2").training
    assert model.features.get_submodule("layer3.0.bn1").training
    train_briefly(model, colour_dataset())
    moved = changed(before, snapshot(model), "features.")
    assert moved, "layer3 and layer4 should learn"
    assert all(k.startswith(("features.layer3.", "features.layer4.")) for k in moved)
    assert "features.layer3.0.bn1.running_mean" in moved  # statistics adapt where it learns


def test_fine_tuning_uses_its_own_learning_rate_for_the_backbone():
    from cnnlab.runs.transfer import TransferSpec, _param_groups

    model = build_transfer_model("fast_resnet", "none", num_classes=3, fine_tune_from="blocks.1",
                                 backbone_options={"width": 8})
    groups = _param_groups(model, TransferSpec(backbone_lr=1e-4), TrainConfig(lr=1e-2))
    assert groups[1]["lr"] == 1e-4 and "lr" not in groups[0]
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups[0]["params"]} == head_ids
    backbone_names = {n for n, p in model.features.named_parameters() if p.requires_grad}
    assert backbone_names and all(n.startswith(("blocks.1.", "blocks.2.")) for n in
                                  backbone_names)
    default = _param_groups(model, TransferSpec(), TrainConfig(lr=1e-2))
    assert default[1]["lr"] == pytest.approx(1e-3)


def test_freeze_and_fine_tune_from_contradict():
    with pytest.raises(CnnlabError, match="contradict"):
        build_transfer_model("fast_resnet", "none", num_classes=3, freeze=True,
                             fine_tune_from="blocks.1")


def test_fine_tuning_beyond_the_feature_layer_is_an_error():
    with pytest.raises(CnnlabError, match="nothing left to fine-tune"):
        build_transfer_model("resnet18", "none", num_classes=3, layer="layer2",
                             fine_tune_from="layer3")


def test_the_mlp_head_is_pool_256_relu_dropout_classifier():
    model = build_transfer_model("fast_resnet", "none", num_classes=4, layer="blocks.1",
                                 head="mlp", dropout=0.3, backbone_options={"width": 8})
    linear1, relu, dropout, linear2 = model.head
    assert (linear1.in_features, linear1.out_features) == (16, 256)  # blocks.1: 2 x width
    assert isinstance(relu, torch.nn.ReLU) and dropout.p == 0.3
    assert (linear2.in_features, linear2.out_features) == (256, 4)
    assert model(torch.rand(5, 3, 32, 32)).shape == (5, 4)


def test_the_adapter_resizes_and_normalises_with_the_backbone_statistics():
    adapter = InputAdapter(12, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    out = adapter(torch.full((2, 3, 6, 6), 0.5))
    assert out.shape == (2, 3, 12, 12)
    assert torch.allclose(out[:, 0], torch.zeros(1)) and torch.allclose(out[:, 1], torch.ones(1))
    assert InputAdapter(None, None, None)(torch.rand(1, 1, 4, 4)).shape == (1, 3, 4, 4)
