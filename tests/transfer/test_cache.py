"""The frozen-feature cache: same numbers as live features, keyed, and only where it applies."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.models.backbones import build_transfer_model
from cnnlab.runs.transfer import (
    FeatureCache,
    TransferSpec,
    cache_applies,
    train_transfer,
)
from cnnlab.train import TrainConfig, evaluate
from tests.transfer.test_modes import colour_dataset


@pytest.fixture
def frozen_model(resnet18_file):
    return build_transfer_model("resnet18", str(resnet18_file), num_classes=3, freeze=True,
                                resize=12, backbone_options={"cifar_stem": True})


def test_cached_features_equal_features_computed_live(frozen_model, tmp_path):
    data = colour_dataset(20)
    cached = FeatureCache(tmp_path).features(frozen_model, data, batch_size=7)
    frozen_model.eval()
    with torch.no_grad():
        live = frozen_model.encode(data.inputs.float() / 255)
    assert cached.shape == (20, 512)
    assert torch.allclose(cached, live, atol=1e-5)
    # The head on cached features gives the whole model's logits.
    with torch.no_grad():
        assert torch.allclose(frozen_model.head(cached), frozen_model(data.inputs / 255),
                              atol=1e-5)


def test_features_come_back_from_disk_in_a_new_process(frozen_model, tmp_path):
    data = colour_dataset(12)
    tmp_path = tmp_path / "features"
    first = FeatureCache(tmp_path)
    computed = first.features(frozen_model, data)
    FeatureCache.clear_memory()  # as if a new process
    second = FeatureCache(tmp_path)
    again = second.features(frozen_model, data)
    assert [e["source"] for e in first.events + second.events] == ["computed", "disk"]
    assert torch.equal(computed, again)
    assert FeatureCache(tmp_path).features(frozen_model, data) is not None
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_the_key_changes_with_layer_input_size_weights_and_data(tmp_path):
    from safetensors.torch import save_file

    from cnnlab.models import build_model

    weights = tmp_path / "fast_resnet.safetensors"
    save_file(build_model("fast_resnet", width=8).state_dict(), str(weights))

    def key(data=None, **changes):
        options = {"num_classes": 3, "freeze": True, "resize": 12,
                   "backbone_options": {"width": 8}} | changes
        model = build_transfer_model("fast_resnet", options.pop("weights", str(weights)),
                                     **options)
        return FeatureCache.key(model, data or colour_dataset(12))[0]

    base = key()
    assert key() == base
    assert key(head="mlp") == base  # the head is not part of the features
    others = [key(layer="blocks.1"), key(resize=16), key(weights="none"),
              key(data=colour_dataset(13)), key(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))]
    assert base not in others and len(set(others)) == len(others)


def test_augmentation_rules_out_the_cache_with_a_warning_or_an_error():
    assert cache_applies(TransferSpec(freeze=True))
    assert not cache_applies(TransferSpec(freeze=False))
    assert not cache_applies(TransferSpec(freeze=True, cache_features=False))
    with pytest.warns(UserWarning, match="cannot be used with augmentation"):
        assert not cache_applies(TransferSpec(freeze=True, augment="flip"))
    with pytest.raises(CnnlabError, match="cannot be used with augmentation"):
        cache_applies(TransferSpec(freeze=True, augment="flip", cache_features=True))
    with pytest.raises(CnnlabError, match="needs --freeze"):
        cache_applies(TransferSpec(cache_features=True))


def test_a_cached_run_trains_the_head_and_evaluates_like_the_whole_model(
        colour_npz, resnet18_file, tmp_path):
    spec = TransferSpec(backbone="resnet18", weights=str(resnet18_file), data=str(colour_npz),
                        freeze=True, resize=12, backbone_options={"cifar_stem": True},
                        feature_cache=str(tmp_path / "features"))
    result = train_transfer(spec, TrainConfig(epochs=4, batch_size=8, lr=1e-2, threads=1),
                            tmp_path / "run")
    events = result.summary["transfer"]["cache_events"]
    assert [(e["split"], e["source"]) for e in events] == [
        ("train", "computed"), ("val", "computed"), ("test", "computed")]
    assert result.summary["test"]["accuracy"] > 0.9  # colours are easy

    # The whole model, live on the raw test images, agrees with the head on cached features.
    from cnnlab.data import load_images

    test = load_images(colour_npz, "test")
    live = evaluate(result.model, test, device="cpu")
    assert live["accuracy"] == result.summary["test"]["accuracy"]
    assert live["loss"] == pytest.approx(result.summary["test"]["loss"], rel=1e-4)

    # cnnlab evaluate rebuilds it from config.json + model.safetensors.
    from cnnlab.runs import evaluate_run

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run"]["model"] == "transfer" and config["transfer"]["cache_used"]
    evaluated = evaluate_run(tmp_path / "run", device="cpu", write_figures=False)
    assert evaluated["accuracy"] == result.summary["test"]["accuracy"]


def test_a_run_transfers_from_a_run(colour_npz, resnet18_file, tmp_path):
    first = TransferSpec(backbone="resnet18", weights=str(resnet18_file), data=str(colour_npz),
                         freeze=True, backbone_options={"cifar_stem": True},
                         feature_cache="memory")
    train_transfer(first, TrainConfig(epochs=1, batch_size=16, threads=1), tmp_path / "a")
    second = TransferSpec(backbone=None, weights=str(tmp_path / "a"), data=str(colour_npz),
                          layer="conv4_block1_out", head="mlp", fine_tune_from="layer3")
    result = train_transfer(second, TrainConfig(epochs=1, batch_size=16, threads=1),
                            tmp_path / "b")
    assert result.summary["transfer"]["weights"] == f"cnnlab run {tmp_path / 'a'}"
    assert result.summary["transfer"]["layer"] == "layer3.0"
    assert not result.summary["transfer"]["cache_used"]
