"""Fixtures for the beyond-images tests: shared data lookup and tiny synthetic audio.

Synthetic audio here is named as such: sine tones whose pitch depends on the
class, written as real 16-bit WAV files so the real readers are exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

FOLDERS = {"mr": "text-mr", "trec": "text-trec", "fsdd": "audio-fsdd", "churn": "tabular-churn"}


@pytest.fixture(autouse=True)
def _quiet_torch(monkeypatch):
    import torch

    monkeypatch.setenv("CNNLAB_THREADS", os.environ.get("CNNLAB_THREADS", "1"))
    torch.set_num_threads(1)


@pytest.fixture
def shared_data():
    """``shared_data("mr")`` -> the shared folder; skips when $CNNLAB_DATA does not hold it."""

    def find(name: str) -> Path:
        root = os.environ.get("CNNLAB_DATA")
        folder = FOLDERS[name]
        if not root or not (Path(root) / folder).is_dir():
            pytest.skip(f"CNNLAB_DATA is not set to the shared data folder holding {folder}/")
        return Path(root) / folder

    return find


def write_tone(path: Path, hz: float, *, seconds: float = 0.3, sample_rate: int = 8000,
               seed: int = 0) -> Path:
    """A synthetic sine tone with a little noise, as 16-bit mono WAV."""
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = 0.5 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), signal.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


@pytest.fixture
def tone_folder(tmp_path) -> Path:
    """Synthetic clips ``{label}_{n}.wav``: "low" tones at 300-400 Hz, "high" at 1.5-2 kHz."""
    folder = tmp_path / "tones"
    for n in range(10):
        write_tone(folder / f"low_{n}.wav", 300 + 10 * n, seed=n)
        write_tone(folder / f"high_{n}.wav", 1500 + 50 * n, seed=100 + n)
    return folder
