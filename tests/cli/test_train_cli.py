"""``cnnlab train`` and ``cnnlab evaluate`` end to end, and their argument errors."""

import json

import pytest

from cnnlab.cli.main import main


def test_train_on_a_real_cifar10_subset_beats_chance_widely(shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "lenet5", "--data",
                 str(shared_data / "cifar10-jpeg" / "test"), "--limit", "4000", "--epochs", "4",
                 "--lr", "2e-3", "--augment", "flip", "--out", str(out), "--quiet",
                 "--threads", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # A single folder of classes has no test split, so validation accuracy is the measure.
    assert summary["final_val_accuracy"] > 0.25  # chance is 0.10
    assert summary["fit_verdict"]["verdict"] in {"underfitting", "good fit", "overfitting"}
    for name in ("config.json", "metrics.csv", "curves.png", "checkpoint.pt",
                 "model.safetensors", "history.json"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "fit:" in printed


def test_evaluate_reports_per_class_accuracy_and_a_confusion_matrix(shared_data, tmp_path,
                                                                    capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "cifar10", "--limit", "1000", "--epochs", "1", "--out",
                 str(out), "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 10000
    assert len(result["confusion"]) == 10
    assert sum(map(sum, result["confusion"])) == 10000
    assert (out / "confusion-test.png").exists()


def test_jsonl_mode_prints_one_object_per_epoch_then_the_summary(image_folder, tmp_path,
                                                                capsys, isolated_cache):
    assert main(["train", "--data", str(image_folder), "--model", "small_cnn", "--widths", "8",
                 "--epochs", "2", "--batch-size", "4", "--validation", "0.25", "--out",
                 str(tmp_path / "r"), "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["epoch", "epoch", "summary"]
    assert lines[1]["epoch"] == 2


def test_channels_last_is_opt_in(image_folder, tmp_path, isolated_cache):
    for flag, expected in (([], False), (["--channels-last"], True),
                           (["--no-channels-last"], False)):
        out = tmp_path / f"r{len(flag)}"
        assert main(["train", "--data", str(image_folder), "--model", "small_cnn", "--widths",
                     "8", "--epochs", "1", "--batch-size", "4", "--validation", "0.25",
                     "--device", "cpu", "--out", str(out), "--quiet", *flag]) == 0
        assert json.loads((out / "config.json").read_text())["channels_last"] is expected


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "expected a number >= 1"),
    (["train", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--augment", "kerass"], "invalid choice"),
    (["train", "--lr", "-1"], "expected a number > 0"),
])
def test_bad_arguments_say_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_model_gets_close_matches(image_folder, tmp_path, capsys, isolated_cache):
    code = main(["train", "--model", "lenet", "--data", str(image_folder), "--out",
                 str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "Did you mean lenet5" in capsys.readouterr().err


def test_missing_data_gives_the_resolution_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    code = main(["train", "--data", "cifar10", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "dataset 'cifar10' not found" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path), "--quiet"])
    assert code == 2
    assert "no config.json" in capsys.readouterr().err


def test_unwritable_run_directory_fails_before_training(image_folder, tmp_path, capsys,
                                                        isolated_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the run directory's parent should be")
    code = main(["train", "--data", str(image_folder), "--out", str(blocker / "r"), "--quiet"])
    assert code == 2
    assert "cannot write to the run directory" in capsys.readouterr().err
    assert blocker.read_text().startswith("a file")  # nothing already there was touched


def test_tabular_task_without_a_target_column_says_what_to_pass(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,x\n2,y\n")
    code = main(["train", "--task", "tabular", "--data", str(csv), "--out", str(tmp_path / "r"),
                 "--quiet"])
    assert code == 2
    assert "--target COLUMN" in capsys.readouterr().err


def test_evaluate_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path)])
    assert code == 2
    assert "not a cnnlab run" in capsys.readouterr().err
