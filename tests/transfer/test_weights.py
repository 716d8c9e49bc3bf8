"""Where backbone weights come from: hub cache, files, cnnlab runs; and how they fail."""

from __future__ import annotations

import json
import pickle
import urllib.error

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.models import backbones
from cnnlab.models.backbones import (
    IMAGENET_MEAN,
    build_transfer_model,
    hub_weights_path,
    read_state_dict,
)


def loaded_features_equal(model, state) -> bool:
    own = model.features.state_dict()
    return all(torch.equal(own[key], state[key]) for key in own)


def test_missing_imagenet_weights_name_the_hub_cache_file_and_the_ways_out(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(CnnlabError) as caught:
        build_transfer_model("resnet50", "imagenet", num_classes=3, download=False)
    message = str(caught.value)
    assert str(expected) in message
    assert "IMAGENET1K_V2" in message
    for way_out in ("TORCH_HOME", "--weights PATH", "--weights runs/NAME", "--weights none"):
        assert way_out in message


def test_a_failed_download_is_an_error_not_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CnnlabError, match="downloading https://download.pytorch.org/models/"
                                          "resnet18-f37072fd.pth failed"):
        build_transfer_model("resnet18", "imagenet", num_classes=3)


def test_imagenet_weights_in_the_hub_cache_are_used_with_imagenet_statistics(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, _ = hub_weights_path("resnet18", "imagenet")
    state = backbones._build_architecture("resnet18", {}).state_dict()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    # The file's name promises a sha256 prefix that random weights cannot have.
    with pytest.raises(CnnlabError, match="is corrupt"):
        build_transfer_model("resnet18", "imagenet", num_classes=3)
    monkeypatch.setattr(backbones, "_check_hub_hash", lambda path: None)
    model = build_transfer_model("resnet18", "imagenet", num_classes=3)
    assert loaded_features_equal(model, state)
    assert str(path) in model.provenance["weights"]
    assert model.options["mean"] == pytest.approx(IMAGENET_MEAN)


def test_a_missing_weights_file_says_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(CnnlabError, match="no such file or run directory") as caught:
        build_transfer_model("resnet18", str(missing), num_classes=3)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_saved_as_safetensors_or_a_state_dict_load(tmp_path, resnet18_cifar_state,
                                                           suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(resnet18_cifar_state, str(path))
    else:
        torch.save(resnet18_cifar_state, path)
    model = build_transfer_model("resnet18", str(path), num_classes=3,
                                 backbone_options={"cifar_stem": True})
    assert loaded_features_equal(model, resnet18_cifar_state)
    assert model.head.out_features == 3  # the file's 7-class classifier is not used


def test_checkpoint_wrappers_and_ddp_prefixes_are_unwrapped(tmp_path, resnet18_cifar_state):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {f"module.{k}": v for k, v in resnet18_cifar_state.items()},
                "epoch": 3}, path)
    assert read_state_dict(path).keys() == resnet18_cifar_state.keys()


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Payload.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_crafted_malicious_pickle_is_refused_and_never_runs(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": _Payload()}, handle)
    with pytest.raises(CnnlabError, match="was refused"):
        build_transfer_model("resnet18", str(path), num_classes=3)
    assert not _Payload.marker.exists()


def test_weights_of_another_architecture_are_refused_with_the_mismatch(tmp_path,
                                                                      resnet18_file):
    with pytest.raises(CnnlabError, match=r"conv1.weight is \(64, 3, 3, 3\) there"):
        build_transfer_model("resnet18", str(resnet18_file), num_classes=3)  # no cifar_stem


def make_fake_run(run_dir, model_name="fast_resnet", options=None):
    """A run directory as cnnlab train leaves it: config.json and model.safetensors."""
    from safetensors.torch import save_file

    from cnnlab.models import build_model

    options = options or {"width": 8}
    model = build_model(model_name, num_classes=5, **options)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({
        "run": {"model": model_name, "model_options": options},
        "data": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "classes": list("abcde")}}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / "model.safetensors"))
    return state


def test_a_cnnlab_run_supplies_architecture_weights_and_statistics(tmp_path):
    state = make_fake_run(tmp_path / "runs" / "pretrain")
    model = build_transfer_model(None, str(tmp_path / "runs" / "pretrain"), num_classes=3,
                                 layer="blocks.1", head="mlp")
    assert model.options["backbone"] == "fast_resnet"
    assert model.options["backbone_options"] == {"width": 8}
    assert model.options["mean"] == [0.4, 0.5, 0.6]
    assert loaded_features_equal(model, state)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_a_run_of_another_backbone_than_asked_is_an_error(tmp_path):
    make_fake_run(tmp_path / "pretrain")
    with pytest.raises(CnnlabError, match="holds a fast_resnet, not a resnet18"):
        build_transfer_model("resnet18", str(tmp_path / "pretrain"), num_classes=3)


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(CnnlabError, match="not a cnnlab run"):
        build_transfer_model("resnet18", str(tmp_path / "folder"), num_classes=3)
