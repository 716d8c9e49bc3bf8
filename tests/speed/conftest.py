"""Shared fixtures of the speed tests: a tiny dataset with a test split."""

import numpy as np
import pytest


@pytest.fixture
def tiny_npz(tmp_path):
    """Synthetic 16x16 images: class 1 bright at the top, class 0 bright at the bottom.

    16x16, the smallest power of two that the fast preset's network (three halvings after a
    2x2 stem) accepts.
    """
    rng = np.random.default_rng(0)

    def split(count):
        labels = rng.integers(0, 2, count)
        images = rng.integers(0, 60, (count, 16, 16, 3)).astype(np.uint8)
        for index, label in enumerate(labels):
            rows = slice(0, 8) if label else slice(8, 16)
            images[index, rows] += 150
        return images, labels

    x_train, y_train = split(96)
    x_test, y_test = split(40)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path
