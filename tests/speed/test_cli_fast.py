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
