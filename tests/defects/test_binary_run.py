"""A binary run end to end on a tiny folder: run directory, policy table, evaluate, CLI, sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.data import ArrayDataset
from cnnlab.diagnose.thresholds import PolicySettings, choose_threshold
from cnnlab.models import build_model
from cnnlab.runs.binary import (
    BalancedSampler,
    BinarySpec,
    evaluate_binary,
    load_binary_model,
    policy_table_text,
    train_binary,
)
from cnnlab.train import BinaryTask, Callback, Trainer, TrainConfig

TINY_MODEL = {"widths": "4,8", "depth": 1}


@pytest.fixture(scope="module")
def finished_run(shared_binary_folder, tmp_path_factory):
    """One tiny run shared by the tests that only read it (training is the slow part)."""
    out = tmp_path_factory.mktemp("binary-run") / "run"
    summary = train_binary(str(shared_binary_folder), "defective", out, size=16, epochs=2,
                           model_options=TINY_MODEL, min_recall=0.9,
                           config=TrainConfig(batch_size=16, threads=1, checkpoint_every=0))
    return out, summary


def test_a_run_leaves_a_binary_run_directory_with_the_policy_table(finished_run):
    out, summary = finished_run
    for name in ("config.json", "metrics.csv", "history.json", "curves.png", "summary.json",
                 "model.safetensors", "scores.npz", "thresholds.json", "pr-roc.png",
                 "confusion-test.png"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "binary" and config["binary"]["imbalance"] == "pos_weight"
    train_counts = summary["split"]["counts"]["train"]
    assert config["binary_input"]["pos_weight"] == pytest.approx(
        train_counts["negatives"] / train_counts["positives"])
    assert summary["split"]["grouped"] is True
    assert set(summary["policies"]) == {"max_f1", "min_recall", "min_precision", "min_cost",
                                        "fixed"}
    assert summary["settings"]["defect_rate"] == pytest.approx(1 / 3)
    assert json.loads((out / "summary.json").read_text())["policies"].keys() == \
        summary["policies"].keys()

    # The stored scores reproduce the chosen thresholds.
    with np.load(out / "scores.npz") as scores:
        settings = PolicySettings(defect_rate=1 / 3, min_recall=0.9)
        for name in ("max_f1", "min_recall", "min_cost"):
            choice = choose_threshold(name, scores["val_targets"], scores["val_scores"],
                                      settings)
            assert summary["policies"][name]["threshold"] == choice.threshold
    for policy in summary["policies"].values():  # escapes by defect kind add up to the count
        assert sum(policy["test_missed_by_kind"].values()) == policy["test"]["fn"]
        assert set(policy["test_missed_by_kind"]) <= {"spot", "crack"}
    assert summary["split"]["counts"]["test"]["positive_kinds"].keys() <= {"spot", "crack"}
    text = policy_table_text(summary)
    assert "PR-AUC (average precision)" in text and "min_recall" in text
    assert "per 10,000 parts at defect rate 0.3333" in text


def test_evaluate_rechooses_thresholds_and_rescoring_matches_the_stored_scores(finished_run):
    out, summary = finished_run
    result = evaluate_binary(out, min_recall=0.5, defect_rate=0.01, write_figures=False)
    assert result["settings"]["min_recall"] == 0.5
    assert result["settings"]["defect_rate"] == 0.01
    assert result["defect_rate_source"] == "given"
    assert result["test"]["roc_auc"] == pytest.approx(summary["test"]["roc_auc"])
    again = evaluate_binary(out, write_figures=False)
    assert {name: p["test_missed_by_kind"] for name, p in again["policies"].items()} == \
        {name: p["test_missed_by_kind"] for name, p in summary["policies"].items()}

    rescored = evaluate_binary(out, rescore=True, device="cpu", write_figures=False)
    for name, policy in summary["policies"].items():
        assert rescored["policies"][name]["threshold"] == pytest.approx(policy["threshold"],
                                                                         abs=1e-6)
    model, config = load_binary_model(out)
    assert config["task"] == "binary" and model.head[-1].out_features == 1


def test_cli_trains_and_evaluates_a_binary_run(binary_folder, tmp_path, capsys):
    from cnnlab.cli.main import main

    out = tmp_path / "cli-run"
    code = main(["train", "--task", "binary", "--data", str(binary_folder), "--positive",
                 "defective", "--model", "small_cnn", "--widths", "4,8", "--depth", "1",
                 "--resize", "16", "--epochs", "1", "--batch-size", "16", "--threads", "1",
                 "--min-recall", "0.9", "--imbalance", "sampler", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "min_recall" in printed and "escapes" in printed and "ROC-AUC" in printed
    assert json.loads((out / "config.json").read_text())["binary"]["imbalance"] == "sampler"

    assert main(["evaluate", str(out), "--min-recall", "0.8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["min_recall"] == 0.8
    for policy in result["policies"].values():
        assert {"threshold", "escapes_per_parts", "discards_per_parts"} <= set(policy)
        assert {"precision", "recall"} <= set(policy["test"])


def test_cli_names_a_wrong_positive_class(binary_folder, tmp_path, capsys):
    from cnnlab.cli.main import main

    code = main(["train", "--task", "binary", "--data", str(binary_folder), "--positive",
                 "defect", "--resize", "16", "--epochs", "1", "--out", str(tmp_path / "x")])
    assert code != 0
    assert "defective/, good/" in capsys.readouterr().err


class _Recorder(Callback):
    def __init__(self) -> None:
        self.shares: list[float] = []
        self.sizes: list[int] = []

    def on_step_end(self, trainer, step, loss) -> None:
        self.shares.append(trainer.train_targets.float().mean().item())
        self.sizes.append(len(trainer.train_targets))


def test_balanced_sampler_trains_on_balanced_epochs_and_restores_the_data():
    # 60 negatives, 4 positives: each epoch's draw is half positives, the real data returns.
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8, generator=generator)
    targets = torch.zeros(64)
    targets[:4] = 1
    train = ArrayDataset(inputs, targets, ["good", "defective"])
    sampler, recorder = BalancedSampler(seed=1), _Recorder()
    model = build_model("small_cnn", num_classes=1, in_channels=1, widths="4", depth=1)
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=16, threads=1), train=train,
                      task=BinaryTask(), callbacks=[sampler, recorder])
    trainer.fit()
    # Steps 1-3 of each epoch see the balanced draw; the recorder runs after the sampler
    # restored the data on an epoch's last step.
    assert recorder.shares[0] == pytest.approx(0.5) and recorder.shares[4] == pytest.approx(0.5)
    assert recorder.shares[3] == pytest.approx(4 / 64)
    assert set(recorder.sizes) == {64}
    assert trainer.train_targets is train.targets or torch.equal(trainer.train_targets,
                                                                 train.targets)


def test_bad_binary_options_are_refused():
    with pytest.raises(CnnlabError, match="--imbalance 'oversample' is unknown"):
        BinarySpec(imbalance="oversample")
    with pytest.raises(CnnlabError, match="--focal-gamma must be >= 0"):
        BinarySpec(focal_gamma=-1)
