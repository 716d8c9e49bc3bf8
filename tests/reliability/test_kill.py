"""Runs killed with SIGKILL at random points resume to the same result; nothing is corrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.train import CHECKPOINT_NAME, load_checkpoint_file

DRIVER = Path(__file__).with_name("_driver.py")
EPOCHS = 4


@pytest.fixture
def data_file(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    x = rng.integers(0, 80, (96, 3, 16, 16)).astype(np.uint8)
    x[y == 1, :, :, :8] += 150
    x[y == 0, :, :, 8:] += 150
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def start(run_dir, data, epochs=EPOCHS, mode=""):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(DRIVER), str(run_dir), str(data), str(epochs),
                             mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def finish(run_dir, data, mode=""):
    process = start(run_dir, data, mode=mode)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return json.loads((Path(run_dir) / "history.json").read_text())


def epochs_done(run_dir):
    path = Path(run_dir) / "history.json"
    try:
        return len(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def assert_same_history(a, b):
    assert len(a) == len(b) == EPOCHS
    for row_a, row_b in zip(a, b):
        for key in ("train_loss", "fit_loss", "val_loss", "val_accuracy", "lr"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), key


def test_kills_at_random_points_then_resume_match_an_uninterrupted_run(tmp_path, data_file):
    reference = finish(tmp_path / "reference", data_file)
    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    process = start(run_dir, data_file)
    while True:
        # Kill somewhere inside an epoch: after a random share of the time an epoch takes.
        deadline = time.time() + 120
        target = epochs_done(run_dir) + 1
        while epochs_done(run_dir) < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if process.poll() is not None or epochs_done(run_dir) >= EPOCHS - 1 or kills >= 2:
            break
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        assert load_checkpoint_file(run_dir / CHECKPOINT_NAME)["epoch"] >= 1
        process = start(run_dir, data_file, mode="resume")
    process.communicate(timeout=300)
    assert kills >= 1
    history = finish(run_dir, data_file, mode="resume") if epochs_done(run_dir) < EPOCHS \
        else json.loads((run_dir / "history.json").read_text())
    assert_same_history(reference, history)


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, data_file):
    run_dir = tmp_path / "run"
    finish(run_dir, data_file)  # a complete run: checkpoint of epoch 4
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["epochs"] == EPOCHS
    # A longer run resumed from it stalls inside its next checkpoint write; kill it there.
    process = subprocess.Popen(
        [sys.executable, str(DRIVER), str(run_dir), str(data_file), str(EPOCHS + 2),
         "slow-checkpoint"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = process.stdout.readline()
    assert line.strip() == "checkpoint-stalled", process.stderr.read()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_checkpoint_file(run_dir / CHECKPOINT_NAME)  # still the complete one
    assert state["epoch"] == EPOCHS
    leftovers = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    assert leftovers  # the half-written temp file, never read
    # The next write replaces it; resuming works.
    finish(run_dir, data_file, mode="resume")


def test_a_kill_during_the_cache_build_never_leaves_a_half_read_cache(tmp_path, monkeypatch):
    from tests.conftest import write_image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for index in range(40):
            write_image(folder / label / f"{index}.png",
                        rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    process = start(tmp_path / "unused", folder, mode="slow-cache")
    time.sleep(1.5)  # part-way through 80 files at 50 ms each
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(cache.rglob("done.json"))

    from cnnlab.data import load_image_folder

    data = load_image_folder(folder, progress=False)
    assert tuple(data.inputs.shape) == (80, 3, 8, 8)
    assert len(list(cache.rglob("done.json"))) == 1
