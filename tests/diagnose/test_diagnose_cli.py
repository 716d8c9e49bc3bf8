"""``cnnlab diagnose RUN [--json]`` on a run trained with ``cnnlab train --monitor gradients``."""

from __future__ import annotations

import json

from cnnlab.cli.main import main
from cnnlab.diagnose.gradients import KINDS


def test_train_with_monitor_then_diagnose_json_lists_verdicts(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "plain", "--depth", "12", "--activation", "sigmoid",
                 "--data", str(image_folder), "--validation", "4", "--epochs", "3",
                 "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.05", "--monitor",
                 "gradients", "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gradient_verdicts"][0]["kind"] == "vanishing"
    capsys.readouterr()

    assert main(["diagnose", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [v["kind"] for v in result["verdicts"]] == ["vanishing"]
    for verdict in result["verdicts"]:
        assert verdict["kind"] in KINDS
        assert verdict["layers"] and verdict["remedies"]
        assert verdict["evidence"]["first_to_last_grad_ratio"] < 1e-3
    assert result["fit_verdict"]["verdict"] in {"underfitting", "good fit", "overfitting"}
    assert all(path.endswith(".png") for path in result["figures"])

    assert main(["diagnose", str(out), "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "vanishing: the gradient norm of the first layer" in text
    assert "  1. add residual connections" in text
    assert "fit: " in text


def test_diagnose_without_monitor_files_explains_how_to_get_them(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "--monitor gradients" in capsys.readouterr().err
