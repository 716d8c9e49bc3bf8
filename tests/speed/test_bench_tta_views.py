"""benchmarks/bench_tta_views.py: the shifted views whose logits it averages."""


import pytest
import torch

from tests.speed._benchmarks import benchmark_module


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("bench_tta_views")


def test_shifted_moves_the_image_by_one_pixel_with_reflected_edges(bench):
    image = torch.arange(12.0).view(1, 1, 3, 4)
    right = bench.shifted(image, 1, 0)
    assert right.shape == image.shape
    assert torch.equal(right[..., 1:], image[..., :-1])  # column x now holds column x - 1
    assert torch.equal(right[..., 0], image[..., 1])  # the new left edge is reflected
    up = bench.shifted(image, 0, -1)
    assert torch.equal(up[..., :-1, :], image[..., 1:, :])
    assert torch.equal(up[..., -1, :], image[..., -2, :])

