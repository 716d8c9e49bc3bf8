"""``cnnlab train --preset fast``: the recipe from the command line, with its summary."""

import json

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


def test_preset_fast_without_epochs_trains_the_recipes_own_epochs(monkeypatch, tmp_path):
    import cnnlab.runs.fast as fast

    seen = {}

    def fake_train_fast(data, out, *, epochs, **kwargs):
        seen["epochs"] = epochs
        raise _Stop

    monkeypatch.setattr(fast, "train_fast", fake_train_fast)
    try:
        main(["train", "--preset", "fast", "--data", "cifar10", "--out", str(tmp_path / "f")])
    except _Stop:
        pass
    # None lets train_fast take FAST_RECIPE.epochs, not the plain trainer's default of 10
    assert seen == {"epochs": None}
    assert fast.FAST_RECIPE.epochs != 10


def test_plain_train_without_epochs_trains_ten(monkeypatch, tmp_path):
    import cnnlab.runs as runs

    seen = {}

    def fake_train_run(spec, config, out, **kwargs):
        seen["epochs"] = config.epochs
        raise _Stop

    monkeypatch.setattr(runs, "train_run", fake_train_run)
    try:
        main(["train", "--model", "lenet5", "--data", "cifar10", "--out", str(tmp_path / "l")])
    except _Stop:
        pass
    assert seen == {"epochs": 10}
