"""Fixtures for the design studies: a small synthetic stand-in for CIFAR-10 (named so).

The smoke tests run the five studies end to end on *synthetic* CIFAR-shaped
data: 32x32 RGB PNGs in CIFAR-10's class folders, each class a colour and a
position of a bright blob over noise, so a model can learn something in one
epoch. It keeps the tests to seconds and independent of $CNNLAB_DATA; the
real CIFAR-10 runs are the studies' cpu profile (see docs/design-studies.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    monkeypatch.setenv("CNNLAB_THREADS", os.environ.get("CNNLAB_THREADS", "1"))
    torch.set_num_threads(1)


def write_synthetic_cifar(root: Path, train_per_class: int = 70, test_per_class: int = 30,
                          seed: int = 0) -> Path:
    """``root/cifar10-jpeg/{train,test}/<class>/<n>.png``; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / "cifar10-jpeg" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(label * 73) % 256, (label * 151) % 256, (label * 29 + 90) % 256])
            row, col = divmod(label, 4)
            for index in range(count):
                image = rng.integers(0, 90, size=(32, 32, 3))
                top, left = 4 + row * 8 + rng.integers(-2, 3), 2 + col * 7 + rng.integers(-2, 3)
                image[top:top + 10, left:left + 10] = colour
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_cifar(tmp_path_factory) -> Path:
    return write_synthetic_cifar(tmp_path_factory.mktemp("synthetic-data"))
