"""Fixtures for the defect-detection tests: tiny synthetic good/defective folders."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_binary_folder(root: Path, *, good_parts: int = 12, defective_parts: int = 6,
                       photos_per_part: int = 3, with_labels: bool = True, seed: int = 0
                       ) -> Path:
    """A dataset root like the shared defect set: ``images/good``, ``images/defective/<type>``.

    Each part is photographed ``photos_per_part`` times (grayscale, non-square
    20x14); a defect is a bright square. ``labels.csv`` names each part's
    group in ``tile_group`` when ``with_labels``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    parts = [("good", None, index) for index in range(good_parts)]
    parts += [("defective", ("spot", "crack")[index % 2], index) for index in
              range(defective_parts)]
    for label, kind, index in parts:
        base = rng.integers(60, 120, size=(20, 14), dtype=np.uint8)
        for photo in range(photos_per_part):
            image = np.clip(base.astype(int) + rng.integers(-10, 10, base.shape), 0, 255)
            image = image.astype(np.uint8)
            if label == "defective":
                image[6:12, 4:10] = 250
            folder = "images/good" if kind is None else f"images/defective/{kind}"
            relative = f"{folder}/part{index}_photo{photo}.png"
            _write_png(root / relative, image)
            rows.append({"image": relative, "label": label, "defect_type": kind or "none",
                         "tile_group": f"{kind or 'good'}-{index}"})
    if with_labels:
        with open(root / "labels.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    return cache


@pytest.fixture
def make_folder(private_cache):
    """The folder factory, for tests that need a folder unlike the default one."""
    return make_binary_folder


@pytest.fixture
def binary_folder(tmp_path, private_cache) -> Path:
    return make_binary_folder(tmp_path / "parts")


@pytest.fixture(scope="module")
def shared_binary_folder(tmp_path_factory):
    """One default folder (with its own decode cache) for every test of a module."""
    root = tmp_path_factory.mktemp("binary-folder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(root / "cache"))
        yield make_binary_folder(root / "parts")


@pytest.fixture
def defect_data() -> Path:
    """The shared magnetic-tile set under $CNNLAB_DATA; tests that need it skip without it."""
    root = os.environ.get("CNNLAB_DATA")
    if not root or not (Path(root) / "defect-magnetic-tile").is_dir():
        pytest.skip("CNNLAB_DATA is not set to the shared data folder holding "
                    "defect-magnetic-tile/")
    return Path(root) / "defect-magnetic-tile"
