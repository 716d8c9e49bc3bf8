"""``cnnlab train --preset fast``: the recipe from the command line, with its summary."""

import json

import pytest

from cnnlab.cli.main import main


def test_preset_fast_trains_and_reports_time_to_accuracy(tiny_npz, tmp_path, capsys):
    out = tmp_path / "fast"
    code = main(["train", "--preset", "fast", "--data", str(tiny_npz), "--epochs", "1",
                 "--limit", "64", "--threads", "1", "--device", "cpu", "--out", str(out),
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "preset fast: pool_resnet" in printed
    assert "with test-time flips" in printed
    assert "time to 80%:" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "fast" and summary["train_images"] == 64
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["schedule"] == "onecycle" and config["train"]["optimizer"] == "sgd"
    assert config["train"]["label_smoothing"] == 0.2


class _Stop(Exception):
    """Raised by a stand-in trainer once it has seen the epochs it was given."""


def epochs_given(monkeypatch, module, name, argv, epochs_of):
    """Run ``cnnlab argv`` with ``module.name`` replaced by a stand-in; the epochs it was given."""
    seen = []

    def stand_in(*args, **kwargs):
        seen.append(epochs_of(*args, **kwargs))
        raise _Stop

    monkeypatch.setattr(module, name, stand_in)
    with pytest.raises(_Stop):
        main(argv)
    return seen


def test_preset_fast_without_epochs_trains_the_recipes_own_epochs(monkeypatch, tmp_path):
    import cnnlab.runs.fast as fast

    seen = epochs_given(monkeypatch, fast, "train_fast",
                        ["train", "--preset", "fast", "--data", "cifar10", "--out",
                         str(tmp_path / "f")], lambda *args, epochs, **kwargs: epochs)
    # None lets train_fast take FAST_RECIPE.epochs, not the plain trainer's default of 10
    assert seen == [None]
    assert fast.FAST_RECIPE.epochs != 10


def test_plain_train_without_epochs_trains_ten(monkeypatch, tmp_path):
    import cnnlab.runs as runs

    seen = epochs_given(monkeypatch, runs, "train_run",
                        ["train", "--model", "lenet5", "--data", "cifar10", "--out",
                         str(tmp_path / "l")], lambda spec, config, out, **kwargs: config.epochs)
    assert seen == [10]
