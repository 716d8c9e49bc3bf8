"""What is being learned: the loss and what counts as a correct prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Task:
    """The loss and the accuracy count of a learning task; subclass for a new task."""

    name = "task"

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Number of correct predictions (a tensor, so it can stay on the device) and the count."""
        raise NotImplementedError

    def eval_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss reported on validation and test data (defaults to the training loss)."""
        return self.loss(logits, targets)


class ClassificationTask(Task):
    """Single-label classification: softmax cross-entropy, optional label smoothing.

    Validation and test losses are reported without smoothing, so they stay
    comparable between runs that differ in smoothing.
    """

    name = "classify"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def eval_loss(self, logits, targets):
        return F.cross_entropy(logits, targets)

    def correct(self, logits, targets):
        return (logits.argmax(dim=1) == targets).sum(), targets.numel()


class SigmoidClassificationTask(Task):
    """Single-label classes scored by independent sigmoids (one-vs-rest BCE) instead of softmax."""

    name = "classify-sigmoid"

    def loss(self, logits, targets):
        one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, one_hot)

    def correct(self, logits, targets):
        return (logits.argmax(dim=1) == targets).sum(), targets.numel()


class BinaryTask(Task):
    """One logit per sample, ``BCEWithLogitsLoss``; targets are 0/1.

    ``pos_weight`` multiplies the loss of positive samples (a common
    remedy for class imbalance: negatives/positives); ``focal_gamma`` > 0
    switches to the focal loss, which down-weights easy samples.
    """

    name = "binary"

    def __init__(self, pos_weight: float | None = None, focal_gamma: float = 0.0) -> None:
        self.pos_weight = pos_weight
        self.focal_gamma = focal_gamma

    def loss(self, logits, targets):
        logits = logits.reshape(-1)
        targets = targets.reshape(-1).to(logits.dtype)
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight,
                                                                    device=logits.device)
        per_sample = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight,
                                                        reduction="none")
        if self.focal_gamma > 0:
            probability_true = torch.exp(-F.binary_cross_entropy_with_logits(
                logits, targets, reduction="none"))
            per_sample = per_sample * (1 - probability_true) ** self.focal_gamma
        return per_sample.mean()

    def correct(self, logits, targets):
        predictions = (logits.reshape(-1) > 0).long()
        return (predictions == targets.reshape(-1).long()).sum(), targets.numel()


def default_task(targets: torch.Tensor, num_outputs: int | None = None) -> Task:
    """Classification for integer targets; binary for float 0/1 targets."""
    if targets.is_floating_point():
        return BinaryTask()
    return ClassificationTask()
