"""FGSM and the corruptions: bounded, loss-increasing, exact where they should be."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.data import ArrayDataset
from cnnlab.diagnose.robustness import (
    DEFAULT_PERTURBATIONS,
    Perturbation,
    fgsm,
    gaussian_noise,
    perturbed_accuracy,
    rotate,
    translate,
)


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3))


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 12, 12, generator=generator)
    targets = torch.randint(0, 3, (16,), generator=generator)
    return images, targets


@pytest.mark.parametrize("epsilon", [0.0, 1 / 255, 4 / 255, 0.1])
def test_fgsm_moves_each_pixel_at_most_epsilon_and_stays_in_range(batch, epsilon):
    images, targets = batch
    adversarial = fgsm(_tiny_model(), images, targets, epsilon)
    assert (adversarial - images).abs().max() <= epsilon + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize("seed", range(3))
def test_fgsm_increases_the_loss(batch, seed):
    images, targets = batch
    model = _tiny_model(seed)
    mean = torch.full((1, 3, 1, 1), 0.5)
    std = torch.full((1, 3, 1, 1), 0.25)
    loss = nn.functional.cross_entropy

    def loss_of(x):
        with torch.no_grad():
            return float(loss(model((x - mean) / std), targets))

    adversarial = fgsm(model, images, targets, 2 / 255, mean=mean, std=std)
    assert loss_of(adversarial) > loss_of(images)


def test_fgsm_leaves_no_parameter_gradients_and_restores_the_mode(batch):
    model = _tiny_model().train()
    fgsm(model, *batch, 0.01)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_translate_by_whole_pixels_copies_pixels_and_repeats_the_edge():
    image = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5) / 25
    moved = translate(image, [(1, 0)])  # content one pixel to the right
    assert torch.equal(moved[0, 0, :, 1:], image[0, 0, :, :-1])
    assert torch.equal(moved[0, 0, :, 0], image[0, 0, :, 0])  # the edge column repeats
    down = translate(image, [(0, 2)])
    assert torch.equal(down[0, 0, 2:], image[0, 0, :-2])


def test_rotation_by_zero_and_by_a_full_turn_is_identity_and_90_degrees_turns():
    image = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(rotate(image, [0.0]), image, atol=1e-6)
    quarter = rotate(image, [90.0])
    assert torch.allclose(quarter[0, 0], torch.rot90(image[0, 0], k=-1), atol=1e-5) or \
        torch.allclose(quarter[0, 0], torch.rot90(image[0, 0], k=1), atol=1e-5)


def test_noise_has_the_requested_spread_and_is_clipped():
    images = torch.full((8, 3, 16, 16), 0.5)
    noisy = gaussian_noise(images, 0.05, torch.Generator().manual_seed(0))
    assert math.isclose(float((noisy - images).std()), 0.05, rel_tol=0.05)
    assert gaussian_noise(images, 5.0).min() >= 0


def test_perturbed_accuracy_is_reproducible_and_clean_matches_plain_accuracy():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8, generator=generator)
    data = ArrayDataset(images, torch.randint(0, 3, (40,), generator=generator), ["a", "b", "c"],
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = _tiny_model()
    rows = perturbed_accuracy(model, data, DEFAULT_PERTURBATIONS, batch_size=16, device="cpu")
    again = perturbed_accuracy(model, data, DEFAULT_PERTURBATIONS, batch_size=16, device="cpu")
    assert [r.accuracy for r in rows] == [r.accuracy for r in again]
    from cnnlab.train import evaluate

    assert rows[0].label == "clean"
    assert math.isclose(rows[0].accuracy, evaluate(model, data, device="cpu")["accuracy"])
    fgsm_rows = [r for r in rows if r.kind == "fgsm"]
    assert fgsm_rows[-1].loss > rows[0].loss


def test_unknown_or_negative_perturbations_are_refused():
    with pytest.raises(CnnlabError, match="blur"):
        Perturbation("blur", 1)
    with pytest.raises(CnnlabError, match=">= 0"):
        Perturbation("noise", -0.1)
