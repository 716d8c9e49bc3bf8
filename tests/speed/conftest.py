"""Shared fixtures of the speed tests: a tiny dataset with a test split."""

import numpy as np
import pytest


@pytest.fixture
def tiny_npz(tmp_path):
    """Synthetic 8x8 images: class 1 bright at the top, class 0 bright at the bottom."""
    rng = np.random.default_rng(0)

    def split(count):
        labels = rng.integers(0, 2, count)
        images = rng.integers(0, 60, (count, 8, 8, 3)).astype(np.uint8)
        for index, label in enumerate(labels):
            rows = slice(0, 4) if label else slice(4, 8)
            images[index, rows] += 150
        return images, labels

    x_train, y_train = split(96)
    x_test, y_test = split(40)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path
