"""Data-parallel training under torchrun on two CPU ranks (gloo)."""

import json
import subprocess
import sys

import pytest

from cnnlab.cli.main import main


def train(data, out, epochs, *extra):
    return ["train", "--data", str(data), "--model", "small_cnn", "--widths", "16,32",
            "--depth", "1", "--limit", "800", "--epochs", str(epochs), "--batch-size", "64",
            "--lr", "2e-3", "--out", str(out), "--quiet", "--threads", "1", *extra]


def test_two_ranks_match_one_rank_with_the_same_global_batch(shared_data, tmp_path):
    data = shared_data / "cifar10-jpeg" / "test"
    # Warm the decode cache once, so the two ranks do not both decode.
    assert main(train(data, tmp_path / "one", 2)) == 0
    code = subprocess.run([sys.executable, "-m", "cnnlab.cli.main",
                           *train(data, tmp_path / "two", 2, "--nproc", "2")],
                          capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # Same data, steps and global batch; batch-norm statistics are per rank, so "within noise".
    assert abs(one["final_val_accuracy"] - two["final_val_accuracy"]) < 0.06
    assert two["final_val_accuracy"] > 0.15
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(history) == 2


def test_a_two_rank_checkpoint_resumes_on_one_rank(shared_data, tmp_path):
    data = shared_data / "cifar10-jpeg" / "test"
    code = subprocess.run([sys.executable, "-m", "cnnlab.cli.main",
                           *train(data, tmp_path / "run", 1, "--nproc", "2")],
                          capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr[-2000:]
    # Ask for more epochs on resume by editing the stored config, as a user extending a run.
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["train"]["epochs"] = 2
    config_path.write_text(json.dumps(config))
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet", "--threads", "1"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["epochs_completed"] == 2


@pytest.mark.parametrize("argv", [["train", "--nproc", "0"]])
def test_nproc_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert "expected a number >= 1" in capsys.readouterr().err
