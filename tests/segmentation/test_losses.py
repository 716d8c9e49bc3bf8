"""Each segmentation loss equals a direct computation, has gradients, and is lowest at the truth."""

import math

import numpy as np
import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.train.segmentation import (
    LOSS_NAMES,
    SegmentationTask,
    segmentation_loss,
)


def small_batch(seed: int = 0, shape=(3, 1, 5, 6)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    masks = (torch.rand(shape, generator=generator) < 0.35).to(torch.float64)
    masks[1] = 0  # one image without foreground: the overlap losses must stay defined
    return logits, masks


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ---- direct computations, pixel by pixel in numpy -------------------------------------------


def direct_bce(logits, masks, pos_weight=1.0):
    total = 0.0
    for z, t in zip(logits.ravel(), masks.ravel()):
        p = sigmoid(z)
        total += -(pos_weight * t * math.log(p) + (1 - t) * math.log(1 - p))
    return total / logits.size


def direct_overlap(logits, masks, kind, smooth=1.0):
    scores = []
    for z, t in zip(logits, masks):
        p = sigmoid(z.ravel())
        t = t.ravel()
        intersection = sum(a * b for a, b in zip(p, t))
        if kind == "iou":
            union = sum(a + b - a * b for a, b in zip(p, t))
            scores.append(1 - (intersection + smooth) / (union + smooth))
        else:
            scores.append(1 - (2 * intersection + smooth) / (p.sum() + t.sum() + smooth))
    return float(np.mean(scores))


def direct_focal(logits, masks, gamma=2.0):
    total = 0.0
    for z, t in zip(logits.ravel(), masks.ravel()):
        p = sigmoid(z)
        p_true = p if t == 1 else 1 - p
        total += -((1 - p_true) ** gamma) * math.log(p_true)
    return total / logits.size


def direct_lovasz(logits, masks):
    """Algorithm 1 of Berman et al. (2018), one image at a time, with explicit loops."""
    losses = []
    for z, t in zip(logits, masks):
        z, t = z.ravel(), t.ravel()
        errors = 1 - z * (2 * t - 1)
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        positives = t.sum()
        previous_jaccard, loss = 0.0, 0.0
        for rank in range(len(order)):
            first = order[: rank + 1]
            intersection = positives - sum(t[i] for i in first)
            union = positives + sum(1 - t[i] for i in first)
            jaccard = 1 - intersection / union
            loss += max(errors[order[rank]], 0.0) * (jaccard - previous_jaccard)
            previous_jaccard = jaccard
        losses.append(loss)
    return float(np.mean(losses))


DIRECT = {
    "bce": lambda z, t: direct_bce(z, t),
    "iou": lambda z, t: direct_overlap(z, t, "iou"),
    "jaccard": lambda z, t: direct_overlap(z, t, "iou"),
    "dice": lambda z, t: direct_overlap(z, t, "dice"),
    "bce+dice": lambda z, t: direct_bce(z, t) + direct_overlap(z, t, "dice"),
    "lovasz": direct_lovasz,
    "focal": direct_focal,
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_equals_direct_computation(name):
    logits, masks = small_batch()
    value = segmentation_loss(name)(logits, masks).item()
    expected = DIRECT[name](logits.numpy(), masks.numpy())
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_bce_pos_weight_equals_direct_computation():
    logits, masks = small_batch(1)
    value = segmentation_loss("bce", pos_weight=3.5)(logits, masks).item()
    assert value == pytest.approx(direct_bce(logits.numpy(), masks.numpy(), 3.5), rel=1e-9)


def test_lovasz_on_hard_errors_equals_the_jaccard_loss_of_the_wrong_pixels():
    # On logits whose hinge errors are exactly 0 or 1, the Lovasz extension equals
    # the set function itself: |wrong| / |foreground or wrong| (Berman et al., eq. 6).
    generator = torch.Generator().manual_seed(3)
    masks = (torch.rand(4, 1, 6, 6, generator=generator) < 0.4).double()
    wrong = torch.rand(4, 1, 6, 6, generator=generator) < 0.3
    logits = torch.where(wrong, 0.0, 2 * masks - 1)     # error 1 where wrong, 0 elsewhere
    expected = []
    for m, w in zip(masks.bool(), wrong):
        expected.append(w.sum().item() / max(1, (m | w).sum().item()))
    assert segmentation_loss("lovasz")(logits, masks).item() == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_is_differentiable(name):
    logits, masks = small_batch(2)
    logits = logits.clone().requires_grad_(True)
    loss_function = segmentation_loss(name)
    assert torch.autograd.gradcheck(lambda z: loss_function(z, masks), (logits,))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_is_lowest_at_the_true_mask(name):
    # Confident logits that spell out a mask: the true mask must beat every perturbation.
    _, masks = small_batch(4)
    loss_function = segmentation_loss(name)
    confidence = 6.0

    def loss_of(mask):
        return loss_function(confidence * (2 * mask - 1), masks).item()

    at_truth = loss_of(masks)
    generator = torch.Generator().manual_seed(5)
    for flip_fraction in (0.03, 0.1, 0.3):
        for _ in range(5):
            flips = torch.rand(masks.shape, generator=generator) < flip_fraction
            if not flips.any():
                continue
            perturbed = torch.where(flips, 1 - masks, masks)
            assert loss_of(perturbed) > at_truth
    # Growing or shrinking every object (the size errors the study measures) also costs.
    grown = (torch.nn.functional.max_pool2d(masks, 3, 1, 1) > 0).double()
    assert loss_of(grown) > at_truth


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_optimising_logits_alone_recovers_the_true_mask(name):
    _, masks = small_batch(6)
    logits = torch.zeros_like(masks, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    loss_function = segmentation_loss(name)
    for _ in range(300):
        optimiser.zero_grad()
        loss_function(logits, masks).backward()
        optimiser.step()
    assert torch.equal((logits > 0).double(), masks)


def test_unknown_loss_and_misapplied_options_are_clear_errors():
    with pytest.raises(CnnlabError, match="unknown; use one of bce, iou"):
        segmentation_loss("cross-entropy")
    with pytest.raises(CnnlabError, match="pos_weight applies to bce"):
        segmentation_loss("dice", pos_weight=2.0)
    with pytest.raises(CnnlabError, match="do not match"):
        segmentation_loss("bce")(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_task_counts_correct_pixels_at_the_threshold():
    logits = torch.tensor([[[[2.0, -2.0], [0.1, -0.1]]]])
    masks = torch.tensor([[[[1, 1], [1, 0]]]], dtype=torch.uint8)
    correct, total = SegmentationTask("iou").correct(logits, masks)
    assert (correct.item(), total) == (3, 4)
    # At threshold 0.6 the logit 0.1 (p = 0.52) is background, so one more pixel is wrong.
    correct, _ = SegmentationTask("iou", threshold=0.6).correct(logits, masks)
    assert correct.item() == 2
    assert SegmentationTask("bce").loss(logits, masks).ndim == 0
