"""The fast preset: test-time flips, time-to-accuracy bookkeeping, budgets, a tiny real run."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.data import ArrayDataset
from cnnlab.runs import evaluate_run
from cnnlab.runs.fast import (
    FastRecipe,
    Milestone,
    epochs_for_budget,
    evaluate_tta,
    predict_logits_tta,
    time_to_accuracy,
    train_fast,
)


class AsymmetricNet(nn.Module):
    """A model whose output changes under a horizontal flip (a plain linear map of the pixels)."""

    def __init__(self, channels=3, size=8, classes=4):
        super().__init__()
        self.linear = nn.Linear(channels * size * size, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def random_images(count=37, size=8, classes=4, seed=0, statistics=True):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 256, (count, 3, size, size), generator=generator,
                           dtype=torch.uint8)
    targets = torch.randint(0, classes, (count,), generator=generator)
    data = ArrayDataset(inputs, targets, [str(i) for i in range(classes)])
    return data.with_statistics() if statistics else data


@pytest.mark.parametrize("batch_size", [5, 512])
@pytest.mark.parametrize("statistics", [True, False])
def test_flip_averaging_is_the_mean_of_plain_and_mirrored_logits(batch_size, statistics):
    torch.manual_seed(0)
    model = AsymmetricNet()
    data = random_images(statistics=statistics)

    # Independently: normalise by hand, mirror with NumPy, one forward pass each.
    pixels = data.inputs.double().numpy() / 255.0
    if statistics:
        pixels = (pixels - np.array(data.mean)[None, :, None, None]) / \
            np.array(data.std)[None, :, None, None]
    mirrored = np.ascontiguousarray(pixels[..., ::-1])
    weight = model.linear.weight.detach().double().numpy()
    bias = model.linear.bias.detach().double().numpy()
    expected_plain = pixels.reshape(len(data), -1) @ weight.T + bias
    expected_mirrored = mirrored.reshape(len(data), -1) @ weight.T + bias
    expected = (expected_plain + expected_mirrored) / 2

    plain, flipped = predict_logits_tta(model, data, batch_size=batch_size, device="cpu")
    np.testing.assert_allclose(plain.numpy(), expected_plain, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(flipped.numpy(), expected_mirrored, rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected_plain, expected_mirrored, atol=1e-3)  # the flip matters

    metrics = evaluate_tta(model, data, batch_size=batch_size, device="cpu")
    targets = data.targets.numpy()
    assert metrics["accuracy"] == pytest.approx((expected.argmax(1) == targets).mean())
    assert metrics["plain_accuracy"] == pytest.approx((expected_plain.argmax(1) == targets).mean())
    expected_loss = F.cross_entropy(torch.from_numpy(expected), data.targets).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_flip_averaging_restores_training_mode():
    model = nn.Sequential(AsymmetricNet(), nn.Dropout(0.5))
    model.train()
    evaluate_tta(model, random_images(), device="cpu")
    assert model.training


def test_flip_averaging_of_an_empty_set_is_an_error():
    empty = ArrayDataset(torch.zeros(0, 3, 8, 8, dtype=torch.uint8),
                         torch.zeros(0, dtype=torch.long), ["a"])
    with pytest.raises(CnnlabError, match="empty"):
        evaluate_tta(AsymmetricNet(), empty, device="cpu")


HISTORY = [
    {"epoch": 1, "train_clock_seconds": 60.0, "test_tta_accuracy": 0.55},
    {"epoch": 2, "train_clock_seconds": 125.0, "test_tta_accuracy": 0.79},
    {"epoch": 3, "train_clock_seconds": 190.0, "test_tta_accuracy": None},  # not evaluated
    {"epoch": 4, "train_clock_seconds": 250.0, "test_tta_accuracy": 0.8},
    {"epoch": 5, "train_clock_seconds": 310.0, "test_tta_accuracy": 0.78},  # dips again
    {"epoch": 6, "train_clock_seconds": 370.0, "test_tta_accuracy": 0.86},
]


@pytest.mark.parametrize("threshold, epoch, seconds, accuracy", [
    (0.5, 1, 60.0, 0.55),
    (0.79, 2, 125.0, 0.79),   # reaching the threshold exactly counts
    (0.8, 4, 250.0, 0.8),     # the unevaluated epoch is skipped, the later dip ignored
    (0.85, 6, 370.0, 0.86),
    (0.9, None, None, None),  # never reached
])
def test_time_to_accuracy_is_the_first_epoch_at_or_above_the_threshold(threshold, epoch,
                                                                      seconds, accuracy):
    [milestone] = time_to_accuracy(HISTORY, [threshold])
    assert milestone == Milestone(threshold, epoch, seconds, accuracy)
    assert milestone.reached == (epoch is not None)
    assert milestone.to_dict()["reached"] == milestone.reached


def test_time_to_accuracy_sorts_thresholds_and_checks_them():
    milestones = time_to_accuracy(HISTORY, [0.9, 0.5])
    assert [m.threshold for m in milestones] == [0.5, 0.9]
    assert time_to_accuracy([], [0.8]) == [Milestone(0.8, None, None, None)]
    with pytest.raises(CnnlabError, match="threshold 80"):
        time_to_accuracy(HISTORY, [80])


@pytest.mark.parametrize("minutes, epoch_seconds, epochs", [
    (10, 60, 10), (10, 61, 9), (1, 600, 1), (0.5, 1.0, 30)])
def test_budget_gives_the_whole_epochs_that_fit(minutes, epoch_seconds, epochs):
    assert epochs_for_budget(minutes, epoch_seconds) == epochs


def test_budget_must_be_positive():
    with pytest.raises(CnnlabError, match="minutes_budget"):
        epochs_for_budget(0, 10)


# Widths of 8 and more, not 4: torch 2.14 on the CPU aborts (std::bad_alloc in backward) on a
# 4-channel channels_last convolution stack.
TINY = FastRecipe(model_options={"widths": [8, 16, 16]}, batch_size=32, lr=0.05)


def test_train_fast_records_test_accuracy_and_milestones(tiny_npz, tmp_path):
    out = tmp_path / "run"
    result = train_fast(str(tiny_npz), out, epochs=3, recipe=TINY, thresholds=(0.5, 1.0),
                        device="cpu", threads=1)

    history = result.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    clocks = [row["train_clock_seconds"] for row in history]
    assert clocks == sorted(clocks) and clocks[-1] == pytest.approx(
        sum(row["seconds"] for row in history))
    assert all(0 <= row["test_tta_accuracy"] <= 1 for row in history)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "fast" and summary["test_images"] == 40
    # the recorded recipe names the epochs this run trained, not the recipe's default
    assert TINY.epochs != 3 and summary["recipe"]["epochs"] == 3
    assert json.loads((out / "config.json").read_text())["recipe"]["epochs"] == 3
    assert summary["test_tta"]["accuracy"] == pytest.approx(history[-1]["test_tta_accuracy"])
    milestones = {m["threshold"]: m for m in summary["time_to_accuracy"]}
    assert set(milestones) == {0.5, 1.0}
    expected = time_to_accuracy(history, [0.5])[0]
    assert milestones[0.5]["epoch"] == expected.epoch
    # history.json on disk carries the report's columns for the last epoch too
    stored = json.loads((out / "history.json").read_text())
    assert "test_tta_accuracy" in stored[-1]
    # the run directory is an ordinary one: evaluate rebuilds the model and agrees
    evaluated = evaluate_run(out, device="cpu", write_figures=False)
    assert evaluated["samples"] == 40
    assert evaluated["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_train_fast_fits_the_whitening_stem_on_the_normalised_training_images(tiny_npz):
    result = train_fast(str(tiny_npz), None, epochs=1, recipe=TINY, device="cpu", threads=1)
    data = np.load(tiny_npz)
    pixels = torch.from_numpy(data["x_train"]).permute(0, 3, 1, 2).double() / 255
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True)
    stem = result.model.whiten
    with torch.no_grad():
        out = F.conv2d(((pixels - mean) / std).float(), stem.weight.float())
    half = stem.out_channels // 2
    covariance = torch.cov(out[:, :half].permute(1, 0, 2, 3).reshape(half, -1))
    # all 96 training images were the sample (fewer than WHITENING_SAMPLE); a loose tolerance
    # for float32 and the dataset's own estimate of the statistics
    assert torch.allclose(covariance, torch.eye(half), atol=0.05)


def test_train_fast_with_a_budget_chooses_epochs_up_front(tiny_npz):
    result = train_fast(str(tiny_npz), None, minutes_budget=0.003, recipe=TINY, device="cpu",
                        threads=1, limit_train=64, limit_test=16)
    budget = result.summary["budget"]
    assert budget["epochs"] == len(result.history) >= 1
    assert budget["estimated_epoch_seconds"] > 0
    assert result.summary["train_images"] == 64 and result.summary["test_images"] == 16


def test_train_fast_refuses_epochs_and_budget_together(tiny_npz):
    with pytest.raises(CnnlabError, match="not both"):
        train_fast(str(tiny_npz), None, epochs=2, minutes_budget=1, recipe=TINY)
