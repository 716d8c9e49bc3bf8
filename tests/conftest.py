"""Shared test setup: quiet, single-threaded, offline; real data only via $CNNLAB_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# One thread: tests share two cores with each other and with whatever else runs.
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """The folder of real datasets ($CNNLAB_DATA); tests that need it skip without it."""
    root = os.environ.get("CNNLAB_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("CNNLAB_DATA is not set to the shared data folder (see README)")
    return Path(root)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A private decode cache, so a test sees only the cache entries it made."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    return cache


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A synthetic folder of two classes, 6 RGB 8x8 PNG images each (bright vs dark)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, (low, high) in {"bright": (150, 255), "dark": (0, 100)}.items():
        for index in range(6):
            array = rng.integers(low, high, size=(8, 8, 3), dtype=np.uint8)
            write_image(root / label / f"{index}.png", array)
    return root
