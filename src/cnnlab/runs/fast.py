"""Accuracy per minute on CIFAR-10: the fast recipe, test-time flips, time to accuracy.

The recipe (:data:`FAST_RECIPE`) is chosen for time-to-accuracy rather than
for the last tenth of a percent:

- ``pool_resnet`` (widths 64/256/256): a fixed 2x2 stem that whitens image
  patches, fitted on the training images before the first step (decorrelated
  unit-variance inputs train faster, and a frozen stem costs no backward
  pass); three stages of convolution, 2x2 max pool, batch norm and GELU, so
  most of the work runs at a quarter of the resolution, each followed by a
  residual convolution whose branch starts at zero, so that a high learning
  rate is safe from the first step;
- SGD with Nesterov momentum under a one-cycle schedule (warm up, then
  anneal to almost zero): most of the accuracy arrives at the end of the
  anneal, so the schedule is sized to the whole budget up front;
- label smoothing 0.2: over-confident logits are what costs accuracy
  early in a short run;
- pad-4 crop and horizontal flips, batched on the device;
- channels_last: faster on the CPU (oneDNN's preferred layout; the
  trainer's default is NCHW because of a oneDNN crash in the weight
  gradient of narrow 1x1 stride-2 convolutions, see
  ``TrainConfig.channels_last``; this network has no 1x1 convolutions and
  its 3-channel stem computes no weight gradient);
- test-time flips: each test image is scored unflipped and mirrored and
  the two logits averaged (:func:`evaluate_tta`), free accuracy for one
  more forward pass.

:func:`train_fast` trains with that recipe and, after every epoch, measures
test accuracy with flips so that the run records how long it took to reach
each threshold (:func:`time_to_accuracy`). Test accuracy is only reported,
never used to choose anything (no early stopping, no best-epoch restore).
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab._util import CnnlabError, resolve_device, seed_everything, write_json_atomic
from cnnlab.augment import build_augment
from cnnlab.data import ArrayDataset, find_dataset, limit, load_images
from cnnlab.models import build_model
from cnnlab.runs.image import RunSpec
from cnnlab.train import Callback, RunResult, TrainConfig, Trainer, prepare_inputs

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
WHITENING_SAMPLE = 5000  # training images whose 2x2 patches set a whitening stem


@dataclass(frozen=True)
class FastRecipe:
    """The hyperparameters of the fast preset, each with its unit."""

    model: str = "pool_resnet"
    model_options: dict[str, Any] = field(default_factory=lambda: {"widths": [64, 256, 256]})
    epochs: int = 12
    batch_size: int = 128  # images per step
    lr: float = 0.2  # one-cycle peak learning rate
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # L2, coupled to the learning rate (plain SGD)
    warmup_fraction: float = 0.25  # of all steps, rising to the peak
    label_smoothing: float = 0.2
    augment: str = "crop"  # pad 4, random crop back to 32x32, horizontal flip
    channels_last: bool = True

    def train_config(self, epochs: int, *, device: str = "auto", threads: int | None = None,
                     seed: int = 0) -> TrainConfig:
        """The trainer's config for ``epochs`` of this recipe."""
        return TrainConfig(
            epochs=epochs, batch_size=self.batch_size, optimizer="sgd", lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, schedule="onecycle",
            warmup_epochs=self.warmup_fraction * epochs, label_smoothing=self.label_smoothing,
            channels_last=self.channels_last, device=device, threads=threads, seed=seed,
            # The clock should time training alone: no per-epoch fit-subset evaluation.
            fit_subset=0, checkpoint_every=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FAST_RECIPE = FastRecipe()


# ---- test-time flip averaging -------------------------------------------------------------


def _statistics(data: ArrayDataset, device: torch.device, mean, std):
    if mean is None and data.is_image and data.mean is not None:
        mean = torch.tensor(data.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(data.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


@torch.no_grad()
def predict_logits_tta(model: nn.Module, data: ArrayDataset, batch_size: int = 512,
                       device: str | torch.device = "auto", mean: torch.Tensor | None = None,
                       std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, classes] of the plain images and of their horizontal mirrors (on the CPU).

    The model runs in eval mode (its mode is restored). ``mean``/``std``
    default to the dataset's statistics; a per-channel normalisation
    commutes with the flip, so flipping after normalising is exact.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    mean, std = _statistics(data, device, mean, std)
    was_training = model.training
    model.eval()
    plain, mirrored = [], []
    for start in range(0, len(data), batch_size):
        batch, _ = prepare_inputs(data.inputs[start:start + batch_size].to(device), mean, std)
        plain.append(model(batch).float().cpu())
        mirrored.append(model(torch.flip(batch, dims=[-1])).float().cpu())  # [B, C, H, W]
    model.train(was_training)
    if not plain:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(plain), torch.cat(mirrored)


def evaluate_tta(model: nn.Module, data: ArrayDataset, batch_size: int = 512,
                 device: str | torch.device = "auto", mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> dict[str, float]:
    """Test-time flip averaging: accuracy and loss of the mean of plain and mirrored logits.

    Returns ``accuracy`` and ``loss`` (cross-entropy of the averaged logits)
    and, from the same forward passes, ``plain_accuracy`` and ``plain_loss``
    without flips, so the gain of the flips is visible.

    Example::

        metrics = evaluate_tta(model, test)   # {"accuracy": 0.83, "plain_accuracy": 0.82, ...}
    """
    if len(data) == 0:
        raise CnnlabError("evaluate_tta: the dataset is empty; nothing to evaluate")
    plain, mirrored = predict_logits_tta(model, data, batch_size, device, mean, std)
    averaged = (plain + mirrored) / 2
    targets = data.targets.long().cpu()
    return {
        "accuracy": (averaged.argmax(dim=1) == targets).float().mean().item(),
        "loss": F.cross_entropy(averaged, targets).item(),
        "plain_accuracy": (plain.argmax(dim=1) == targets).float().mean().item(),
        "plain_loss": F.cross_entropy(plain, targets).item(),
    }


# ---- time-to-accuracy bookkeeping ---------------------------------------------------------


@dataclass
class Milestone:
    """When a run first reached ``threshold`` test accuracy (``epoch`` None: never)."""

    threshold: float
    epoch: int | None
    seconds: float | None  # training seconds at the end of that epoch
    accuracy: float | None  # the accuracy measured then

    @property
    def reached(self) -> bool:
        return self.epoch is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reached": self.reached}


def time_to_accuracy(history: Sequence[dict], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                     accuracy_key: str = "test_tta_accuracy",
                     clock_key: str = "train_clock_seconds") -> list[Milestone]:
    """The first epoch at which ``accuracy_key`` reached each threshold, and its clock.

    The resolution is one epoch: a threshold crossed mid-epoch is credited
    at that epoch's end, so the times are upper bounds. Rows without the
    accuracy (an epoch that was not evaluated) are skipped.
    """
    milestones = []
    for threshold in sorted(thresholds):
        if not 0 < threshold <= 1:
            raise CnnlabError(f"accuracy threshold {threshold} is not in (0, 1]")
        hit = next((row for row in history
                    if row.get(accuracy_key) is not None and row[accuracy_key] >= threshold),
                   None)
        milestones.append(Milestone(threshold, hit["epoch"], hit.get(clock_key), hit[accuracy_key])
                          if hit else Milestone(threshold, None, None, None))
    return milestones


class TimeToAccuracyReport(Callback):
    """After each epoch: test accuracy with and without flips, and the training clock.

    Adds ``train_clock_seconds`` (training alone, summed over epochs, this
    evaluation excluded), ``test_accuracy``, ``test_tta_accuracy`` and
    ``test_seconds`` to each history row. For reporting only: nothing reads
    these numbers to steer the run.
    """

    def __init__(self, test: ArrayDataset, batch_size: int = 512) -> None:
        self.test = test
        self.batch_size = batch_size
        self.train_clock_seconds = 0.0

    def on_fit_start(self, trainer) -> None:
        self.train_clock_seconds = sum(row.get("seconds", 0.0) for row in trainer.history)

    def on_epoch_end(self, trainer, epoch, row) -> None:
        self.train_clock_seconds += row["seconds"]
        started = time.perf_counter()
        metrics = evaluate_tta(trainer.model, self.test, self.batch_size, trainer.device,
                               trainer.mean, trainer.std)
        row["train_clock_seconds"] = self.train_clock_seconds
        row["test_accuracy"] = metrics["plain_accuracy"]
        row["test_tta_accuracy"] = metrics["accuracy"]
        row["test_seconds"] = time.perf_counter() - started
        log.info("epoch %d: test accuracy %.4f with flips (%.4f without) after %.1f s of "
                 "training", epoch, metrics["accuracy"], metrics["plain_accuracy"],
                 self.train_clock_seconds)


# ---- the run ------------------------------------------------------------------------------


def estimate_epoch_seconds(model: nn.Module, train: ArrayDataset, recipe: FastRecipe,
                           device: str | torch.device = "cpu", steps: int = 3) -> float:
    """Seconds one training epoch of ``recipe`` should take here, from a few timed steps.

    Trains a copy of the model (the original is untouched) for one warm-up
    step and ``steps`` timed ones on real batches with the recipe's
    augmentation, and scales the median step to an epoch.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    probe = copy.deepcopy(model).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=1e-3, momentum=recipe.momentum)
    augment = build_augment(recipe.augment, seed=0)
    mean, std = _statistics(train, device, None, None)
    step_seconds = []
    for step in range(steps + 1):
        index = torch.randint(len(train), (min(recipe.batch_size, len(train)),))
        started = time.perf_counter()
        inputs, targets = prepare_inputs(train.inputs[index].to(device), mean, std, augment,
                                         train.targets[index].to(device), memory_format)
        loss = F.cross_entropy(probe(inputs), targets, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # wait for the device before reading the clock
        if step > 0:  # the first step pays for kernel selection and allocation
            step_seconds.append(time.perf_counter() - started)
    return statistics.median(step_seconds) * math.ceil(len(train) / recipe.batch_size)


def epochs_for_budget(minutes_budget: float, epoch_seconds: float) -> int:
    """Whole epochs of ``epoch_seconds`` that fit in the budget (at least one)."""
    if not minutes_budget > 0:
        raise CnnlabError(f"minutes_budget must be > 0, got {minutes_budget}")
    return max(1, int(minutes_budget * 60 // max(epoch_seconds, 1e-9)))


def load_fast_data(data: str | Path, limit_train: int | None, limit_test: int | None,
                   seed: int, progress: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """The whole training split (no validation carved out: nothing is selected) and the test split.

    Both are normalised with the training images' statistics. ``limit_*``
    take deterministic stratified subsets.
    """
    root = find_dataset(data)
    # A folder of class folders has no test split (load_images would answer with the training
    # images again); an .npz file or a CIFAR batch folder holds one.
    has_test = not root.is_dir() or (root / "test").is_dir() or any(
        (folder / "test_batch").exists() for folder in (root, root / "cifar-10-batches-py"))
    if not has_test:
        raise CnnlabError(f"{root} has no separate test split; the fast preset reports test "
                          "accuracy, so give a dataset with train/ and test/ (or cifar10)")
    train = limit(load_images(data, "train", progress=progress), limit_train, seed=seed)
    train = train.with_statistics()
    test = load_images(data, "test", progress=progress)
    test = limit(test, limit_test, seed=seed)
    test.mean, test.std = train.mean, train.std
    return train, test


def _run_spec(recipe: FastRecipe, data: str | Path, limit_train: int | None) -> RunSpec:
    """The run as an image-classification spec, so that ``cnnlab evaluate RUN`` rebuilds it."""
    return RunSpec(model=recipe.model, model_options=dict(recipe.model_options), data=str(data),
                   augment=recipe.augment, limit=limit_train)


def train_fast(data: str | Path = "cifar10", out: str | Path | None = None, *,
               epochs: int | None = None, minutes_budget: float | None = None,
               recipe: FastRecipe = FAST_RECIPE, limit_train: int | None = None,
               limit_test: int | None = None,
               thresholds: Sequence[float] = DEFAULT_THRESHOLDS, device: str = "auto",
               threads: int | None = None, seed: int = 0, callbacks: Sequence[Callback] = (),
               progress: bool = False) -> RunResult:
    """Train the fast recipe and record when test accuracy (with flips) reached each threshold.

    Give ``epochs`` or ``minutes_budget`` (training minutes; the epochs are
    chosen up front from a few timed steps, because the one-cycle schedule
    must know its length), or neither for the recipe's ``epochs``. The
    budget covers training only: the per-epoch test evaluation comes on top.

    ``out`` receives the trainer's files (config.json, metrics.csv,
    checkpoint.pt) and ``summary.json`` and ``history.json`` with the test
    accuracies and the time-to-accuracy milestones; ``cnnlab evaluate OUT``
    works on it. ``result.summary`` has
    ``time_to_accuracy`` (a list of :class:`Milestone` dicts), ``test``
    (final, with flips and without) and the recipe.

    Example::

        result = train_fast("cifar10", "runs/fast", minutes_budget=10)
        [m for m in result.summary["time_to_accuracy"] if m["reached"]]
    """
    if epochs is not None and minutes_budget is not None:
        raise CnnlabError("give epochs or minutes_budget, not both: the budget chooses the "
                          "epochs")
    started = time.perf_counter()
    train, test = load_fast_data(data, limit_train, limit_test, seed, progress)
    seed_everything(seed)  # the initial weights depend on the seed alone
    model = build_model(recipe.model, **{"num_classes": len(train.classes),
                                         "in_channels": int(train.inputs.shape[1]),
                                         **recipe.model_options})
    if hasattr(model, "fit_whitening"):
        # A data-dependent stem (pool_resnet): whiten the patches of the training images as
        # the trainer will see them, normalised, from a fixed sample.
        sample = train.inputs[torch.randperm(len(train), generator=torch.Generator()
                                             .manual_seed(seed))[:WHITENING_SAMPLE]]
        mean, std = _statistics(train, torch.device("cpu"), None, None)
        model.fit_whitening(prepare_inputs(sample, mean, std)[0])
    budget = None
    if minutes_budget is not None:
        epoch_seconds = estimate_epoch_seconds(model, train, recipe, device)
        epochs = epochs_for_budget(minutes_budget, epoch_seconds)
        budget = {"minutes": minutes_budget, "estimated_epoch_seconds": epoch_seconds,
                  "epochs": epochs}
        log.info("budget %.1f min: about %.0f s per epoch here, so %d epochs", minutes_budget,
                 epoch_seconds, epochs)
    epochs = epochs if epochs is not None else recipe.epochs
    recipe = replace(recipe, epochs=epochs)  # the run's record names the epochs it trained

    config = recipe.train_config(epochs, device=device, threads=threads, seed=seed)
    report = TimeToAccuracyReport(test)
    trainer = Trainer(model, config, train=train, val=None,
                      augment=build_augment(recipe.augment, seed=seed), run_dir=out,
                      callbacks=[report, *callbacks],
                      extra_config={"preset": "fast", "recipe": recipe.to_dict(),
                                    "run": _run_spec(recipe, data, limit_train).to_dict(),
                                    "test_limit": limit_test})
    result = trainer.fit()

    milestones = time_to_accuracy(result.history, thresholds)
    final = evaluate_tta(trainer.model, test, device=trainer.device, mean=trainer.mean,
                         std=trainer.std)
    summary = dict(result.summary)
    summary.update({
        "preset": "fast", "recipe": recipe.to_dict(), "budget": budget,
        "train_images": len(train), "test_images": len(test),
        "train_seconds": report.train_clock_seconds,
        "total_seconds": time.perf_counter() - started,
        "test": {"accuracy": final["plain_accuracy"], "loss": final["plain_loss"]},
        "test_tta": {"accuracy": final["accuracy"], "loss": final["loss"]},
        "time_to_accuracy": [milestone.to_dict() for milestone in milestones],
    })
    result.summary = summary
    if out is not None and trainer.writes_files:
        # The trainer wrote history.json before the report added its columns to the last row.
        write_json_atomic(Path(out) / "history.json", result.history)
        write_json_atomic(Path(out) / "summary.json", summary)
    return result
