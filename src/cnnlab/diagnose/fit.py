"""The fit verdict: underfitting, good fit or overfitting, read from a run's learning curves.

Train accuracy here is ``fit_accuracy``: measured each epoch on a fixed
subset of *un-augmented* training images. Accuracy on augmented batches is
lower than the model's real training accuracy and would hide the gap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

UNDERFITTING, GOOD_FIT, OVERFITTING = "underfitting", "good fit", "overfitting"


@dataclass(frozen=True)
class FitThresholds:
    """When a gap or a rise counts. Units: accuracy points (0-1) and relative loss change."""

    overfit_gap: float = 0.10  # train minus validation accuracy
    overfit_loss_rise: float = 0.10  # validation loss above its minimum, relative
    underfit_gap: float = 0.05
    still_improving: float = 0.01  # relative drop of val loss over the last epochs


@dataclass
class FitVerdict:
    verdict: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.verdict}: {self.reason}"


def fit_verdict(history: list[dict], thresholds: FitThresholds = FitThresholds(),
                chance_accuracy: float | None = None) -> FitVerdict:
    """Judge a run from its per-epoch history (needs ``val_loss`` and ``val_accuracy``).

    - overfitting: train accuracy exceeds validation accuracy by at least
      ``overfit_gap``, or validation loss has risen at least
      ``overfit_loss_rise`` above its minimum since its best epoch;
    - underfitting: the gap is small and validation loss was still falling
      at the end (more epochs or capacity would help), or train accuracy is
      barely above chance;
    - good fit otherwise.
    """
    rows = [r for r in history if r.get("val_loss") is not None]
    if not rows:
        return FitVerdict("unknown", "no validation metrics were recorded", {})
    t = thresholds
    last = rows[-1]
    val_losses = [r["val_loss"] for r in rows]
    best_index = min(range(len(rows)), key=lambda i: val_losses[i])
    best_loss = val_losses[best_index]
    train_accuracy = last.get("fit_accuracy")
    if train_accuracy is None:
        train_accuracy = last.get("train_accuracy")
    val_accuracy = last["val_accuracy"]
    gap = train_accuracy - val_accuracy if train_accuracy is not None else None
    rise = (val_losses[-1] - best_loss) / max(abs(best_loss), 1e-12)
    window = val_losses[-3:] if len(val_losses) >= 3 else val_losses
    recent_drop = (window[0] - window[-1]) / max(abs(window[0]), 1e-12)
    evidence = {
        "train_accuracy": train_accuracy,
        "val_accuracy": val_accuracy,
        "gap": gap,
        "best_epoch": rows[best_index]["epoch"],
        "last_epoch": last["epoch"],
        "best_val_loss": best_loss,
        "final_val_loss": val_losses[-1],
        "val_loss_rise_after_best": rise,
        "val_loss_drop_last_epochs": recent_drop,
    }

    if gap is not None and gap >= t.overfit_gap:
        return FitVerdict(OVERFITTING, (
            f"train accuracy {train_accuracy:.3f} exceeds validation accuracy "
            f"{val_accuracy:.3f} by {gap:.3f}; validation loss was lowest at epoch "
            f"{evidence['best_epoch']} and is {rise:+.1%} from there at epoch {last['epoch']}. "
            "Try augmentation, weight decay, dropout or early stopping."), evidence)
    if rise >= t.overfit_loss_rise and best_index < len(rows) - 1:
        return FitVerdict(OVERFITTING, (
            f"validation loss rose {rise:.1%} after its minimum at epoch "
            f"{evidence['best_epoch']} (gap {gap:.3f}). Stop near epoch "
            f"{evidence['best_epoch']} or regularise."), evidence)
    near_chance = (chance_accuracy is not None and train_accuracy is not None
                   and train_accuracy < chance_accuracy + 0.1 * (1 - chance_accuracy))
    if near_chance:
        return FitVerdict(UNDERFITTING, (
            f"train accuracy {train_accuracy:.3f} is barely above chance "
            f"({chance_accuracy:.3f}): the model has not learned the training data. Check the "
            "learning rate, initialisation and gradients."), evidence)
    if (gap is None or gap < t.underfit_gap) and recent_drop >= t.still_improving \
            and best_index == len(rows) - 1:
        return FitVerdict(UNDERFITTING, (
            f"train and validation accuracy are close ({train_accuracy:.3f} vs "
            f"{val_accuracy:.3f}, gap {gap:.3f}) and validation loss was still falling "
            f"({recent_drop:.1%} over the last {len(window)} epochs): train longer or use a "
            "larger model."), evidence)
    return FitVerdict(GOOD_FIT, (
        f"gap {gap:.3f} between train ({train_accuracy:.3f}) and validation "
        f"({val_accuracy:.3f}) accuracy; validation loss best at epoch "
        f"{evidence['best_epoch']} of {last['epoch']} and {rise:+.1%} from there."), evidence)
