"""Segmentation metrics agree with torchmetrics and with direct computations."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryJaccardIndex
from torchmetrics.functional.classification import binary_jaccard_index
from torchmetrics.functional.segmentation import dice_score

from cnnlab.train.segmentation import (
    boundary_f_score,
    iou_at_thresholds,
    segmentation_metrics,
)


def blob_batch(seed: int = 0, count: int = 6, size: int = 32):
    """Smooth random probability maps and masks that overlap them imperfectly."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 4, 4, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear",
                                             align_corners=False)
    noise = 0.15 * torch.randn(count, 1, size, size, generator=generator)
    probabilities = (smooth + noise).clamp(0, 1)
    masks = (smooth > 0.55).to(torch.uint8)
    return probabilities, masks


def test_set_iou_dice_and_accuracy_match_torchmetrics():
    probabilities, masks = blob_batch()
    summary = segmentation_metrics(probabilities, masks).summary()
    assert summary["iou_set"] == pytest.approx(BinaryJaccardIndex()(probabilities, masks).item(),
                                               abs=1e-6)
    # Dice over the pooled pixels is the binary F1 score.
    assert summary["dice_set"] == pytest.approx(BinaryF1Score()(probabilities, masks).item(),
                                                abs=1e-6)
    assert summary["pixel_accuracy"] == pytest.approx(BinaryAccuracy()(probabilities,
                                                                       masks).item(), abs=1e-6)


def test_per_image_iou_and_dice_match_torchmetrics():
    probabilities, masks = blob_batch(1)
    assert masks.flatten(1).sum(1).min() > 0, "the comparison needs a foreground in every image"
    metrics = segmentation_metrics(probabilities, masks)
    expected_iou = torch.stack([binary_jaccard_index(p, m) for p, m in zip(probabilities, masks)])
    torch.testing.assert_close(metrics.iou.double(), expected_iou.double(), atol=1e-6, rtol=0)
    predicted = (probabilities >= 0.5).long()
    expected_dice = dice_score(predicted, masks.long(), num_classes=1, average="none",
                               input_format="one-hot")
    torch.testing.assert_close(metrics.dice.double(), expected_dice.flatten().double(), atol=1e-6,
                               rtol=0)
    assert metrics.summary()["iou_mean"] == pytest.approx(expected_iou.mean().item(), abs=1e-6)


def test_empty_truth_and_empty_prediction_score_one():
    probabilities = torch.zeros(2, 1, 8, 8)
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    probabilities[1, 0, 2:4, 2:4] = 0.9  # a false alarm on an empty image
    metrics = segmentation_metrics(probabilities, masks)
    assert metrics.iou.tolist() == [1.0, 0.0]
    assert metrics.dice.tolist() == [1.0, 0.0]
    assert metrics.boundary_f.tolist() == [1.0, 0.0]
    assert torch.isnan(metrics.area_ratio).all()


def test_areas_and_area_ratio_count_pixels():
    masks = torch.zeros(1, 1, 10, 10, dtype=torch.uint8)
    masks[0, 0, 2:6, 2:6] = 1                         # 16 true pixels
    probabilities = torch.zeros(1, 1, 10, 10)
    probabilities[0, 0, 2:8, 2:6] = 0.8               # 24 predicted pixels, 16 of them right
    metrics = segmentation_metrics(probabilities, masks)
    assert (metrics.predicted_area.item(), metrics.true_area.item()) == (24, 16)
    assert metrics.area_ratio.item() == pytest.approx(1.5)
    assert metrics.iou.item() == pytest.approx(16 / 24)
    assert metrics.dice.item() == pytest.approx(32 / 40)
    assert metrics.summary()["area_ratio_set"] == pytest.approx(1.5)


def direct_boundary_f(predicted: np.ndarray, truth: np.ndarray, tolerance: int) -> float:
    """BF score with scipy: boundary = mask minus its 3x3 erosion (border counts as inside)."""

    def boundary(mask):
        eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3)), border_value=1)
        return mask & ~eroded

    def within(edge_from, edge_to):
        if not edge_to.any():
            return np.zeros_like(edge_from)
        distance = ndimage.distance_transform_cdt(~edge_to, metric="chessboard")
        return edge_from & (distance <= tolerance)

    edge_p, edge_t = boundary(predicted), boundary(truth)
    if not edge_p.any() and not edge_t.any():
        return 1.0
    if not edge_p.any() or not edge_t.any():
        return 0.0
    precision = within(edge_p, edge_t).sum() / edge_p.sum()
    recall = within(edge_t, edge_p).sum() / edge_t.sum()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("tolerance", [0, 1, 2, 3])
def test_boundary_f_matches_a_direct_scipy_computation(tolerance):
    probabilities, masks = blob_batch(2, count=8)
    predicted = probabilities >= 0.5
    ours = boundary_f_score(predicted, masks, tolerance).tolist()
    expected = [direct_boundary_f(p[0].numpy(), m[0].numpy().astype(bool), tolerance)
                for p, m in zip(predicted, masks)]
    assert ours == pytest.approx(expected, abs=1e-6)


def test_boundary_f_tolerates_shifts_up_to_the_tolerance():
    truth = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    truth[0, 0, 5:15, 5:15] = True
    shifted = torch.roll(truth, shifts=2, dims=3)
    assert boundary_f_score(shifted, truth, tolerance_pixels=2).item() == 1.0
    assert boundary_f_score(shifted, truth, tolerance_pixels=1).item() < 0.9


def test_iou_at_thresholds_reports_each_threshold():
    probabilities, masks = blob_batch(3)
    curve = iou_at_thresholds(probabilities, masks, (0.3, 0.5, 0.7))
    assert list(curve) == ["0.3", "0.5", "0.7"]
    assert curve["0.5"] == pytest.approx(segmentation_metrics(probabilities, masks)
                                         .summary()["iou_mean"])
