"""Shared fixtures for the segmentation tests: quiet single-threaded torch, data paths."""

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The machine is shared; one thread degrades gracefully when another process is busy.
    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    root = os.environ.get("CNNLAB_DATA")
    if not root:
        pytest.skip("CNNLAB_DATA is not set: the real segmentation data is not available")
    return Path(root)


@pytest.fixture
def membrane_root(shared_data: Path) -> Path:
    path = shared_data / "seg-membrane"
    if not (path / "train" / "image").is_dir():
        pytest.skip(f"{path} is missing: the membrane data is not installed")
    return path


@pytest.fixture
def defect_root(shared_data: Path) -> Path:
    path = shared_data / "defect-magnetic-tile"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"{path} is missing: the magnetic-tile defect data is not installed")
    return path
