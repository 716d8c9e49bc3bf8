"""``cnnlab train`` with transfer options, end to end, and its clear failures."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch

from cnnlab.cli.main import main


def test_train_with_transfer_options_then_evaluate(colour_npz, resnet18_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "resnet18", "--model-option", "cifar_stem=true",
                 "--weights", str(resnet18_file), "--freeze", "--head", "mlp", "--dropout",
                 "0.2", "--layer", "conv4_block1_out", "--data", str(colour_npz), "--epochs",
                 "2", "--batch-size", "16", "--feature-cache", "memory", "--out", str(out),
                 "--quiet", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"weights: file {resnet18_file}" in printed
    assert "features at layer3.0 (256 channels)" in printed
    assert "feature cache: train computed" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["model_options"]["dropout"] == 0.2
    assert config["transfer"]["spec"]["layer"] == "conv4_block1_out"

    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert result["accuracy"] == summary["test"]["accuracy"]


def test_missing_imagenet_weights_stop_the_command_with_the_path(tmp_path, monkeypatch,
                                                                colour_npz, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code = main(["train", "--model", "resnet50", "--weights", "imagenet", "--freeze",
                 "--data", str(colour_npz), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in error
    assert "Traceback" not in error


@pytest.mark.parametrize("argv, message", [
    (["--freeze", "--fine-tune-from", "layer3"], "contradict"),
    (["--freeze", "--augment", "flip", "--cache-features"], "cannot be used with augmentation"),
    (["--task", "binary"], "transfer options work with image classification"),
])
def test_contradictory_transfer_options_are_refused(argv, message, colour_npz, tmp_path,
                                                    capsys):
    code = main(["train", "--model", "fast_resnet", "--weights", "none", "--data",
                 str(colour_npz), "--out", str(tmp_path / "run"), "--quiet", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
