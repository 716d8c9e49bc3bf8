"""Binary segmentation in the trainer: losses by name, a Task, metrics, train and evaluate.

Losses (:func:`segmentation_loss`), all on logits ``[B, 1, H, W]`` and masks of
the same shape (or ``[B, H, W]``) holding 0/1:

- ``bce``: each pixel on its own, mean over pixels (optional ``pos_weight``
  multiplies foreground pixels);
- ``iou`` / ``jaccard``: 1 - soft IoU ``(sum p t + s) / (sum (p + t - p t) + s)``
  of the whole mask, per image, mean over images;
- ``dice``: 1 - soft Dice ``(2 sum p t + s) / (sum p + sum t + s)``, per image;
- ``bce+dice``: the sum of the two;
- ``lovasz``: the Lovasz hinge, a convex surrogate of 1 - IoU on the logits
  (Berman et al., 2018), per image;
- ``focal``: BCE scaled by ``(1 - p_true) ** gamma`` so easy pixels count less
  (Lin et al., 2017), mean over pixels.

``p`` is the sigmoid of the logit, ``t`` the true mask and ``s`` the smoothing
term (1 pixel by default), which keeps the overlap losses defined for empty
masks and still puts their minimum exactly at the true mask.

Metrics (:func:`segmentation_metrics`) threshold the probabilities (0.5 by
default) and report, per image and over the set: IoU, Dice, pixel accuracy,
the boundary F-score within a tolerance in pixels, and predicted and true
foreground areas.

:func:`train_segmentation` and :func:`evaluate_segmentation` are what
``cnnlab train --task segment`` and ``cnnlab evaluate RUN`` call.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab._util import CnnlabError, write_json_atomic
from cnnlab.train.tasks import Task
from cnnlab.train.trainer import Callback

log = logging.getLogger(__name__)

LOSS_NAMES = ("bce", "iou", "jaccard", "dice", "bce+dice", "lovasz", "focal")
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METRICS_FILE = "segmentation_metrics.json"

LossFunction = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- losses


def _flatten(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and masks as float ``[B, P]`` (P pixels per image), after a shape check."""
    B = logits.shape[0]
    if targets.shape[0] != B or targets.numel() != logits.numel():
        raise CnnlabError(
            f"segmentation logits {tuple(logits.shape)} and masks {tuple(targets.shape)} do not"
            " match: expected one logit per mask pixel ([B, 1, H, W] for both)"
        )
    return logits.reshape(B, -1), targets.reshape(B, -1).to(logits.dtype)


def bce_loss(logits: Tensor, targets: Tensor, pos_weight: float | None = None) -> Tensor:
    """Binary cross-entropy averaged over every pixel of the batch.

    ``pos_weight`` multiplies the loss of foreground pixels; background/foreground
    pixel ratio (e.g. 3.5 for 22% foreground) balances the classes.
    """
    logits, targets = _flatten(logits, targets)
    weight = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)


def soft_iou_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft IoU (Jaccard) per image, averaged over the batch."""
    logits, targets = _flatten(logits, targets)
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets).sum(1)
    union = (probabilities + targets - probabilities * targets).sum(1)
    return (1 - (intersection + smooth) / (union + smooth)).mean()


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice per image, averaged over the batch."""
    logits, targets = _flatten(logits, targets)
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets).sum(1)
    total = probabilities.sum(1) + targets.sum(1)
    return (1 - (2 * intersection + smooth) / (total + smooth)).mean()


def bce_dice_loss(logits: Tensor, targets: Tensor, pos_weight: float | None = None,
                  smooth: float = 1.0) -> Tensor:
    """BCE plus Dice loss, weighted equally."""
    return bce_loss(logits, targets, pos_weight) + dice_loss(logits, targets, smooth)


def lovasz_hinge_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Lovasz hinge per image (Berman, Rannen Triki, Blaschko, CVPR 2018), averaged.

    The hinge errors ``1 - logit * sign`` are sorted in decreasing order and
    weighted by the gradient of the Jaccard loss's Lovasz extension, so the
    loss is a tight convex surrogate of 1 - IoU. Vectorised over the batch.
    """
    logits, targets = _flatten(logits, targets)
    signs = 2 * targets - 1
    errors = 1 - logits * signs                                     # [B, P]
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    truth_sorted = torch.gather(targets, 1, order)
    foreground = truth_sorted.sum(1, keepdim=True)
    intersection = foreground - truth_sorted.cumsum(1)
    union = foreground + (1 - truth_sorted).cumsum(1)                # >= 1 everywhere
    jaccard = 1 - intersection / union
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * weights).sum(1).mean()


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0,
               alpha: float | None = None) -> Tensor:
    """Focal loss (torchvision's ``sigmoid_focal_loss``) averaged over pixels.

    ``alpha=None`` weights both classes equally, so that only the focusing term
    differs from BCE (torchvision's detection default, alpha = 0.25, would
    down-weight foreground pixels).
    """
    from torchvision.ops import sigmoid_focal_loss

    logits, targets = _flatten(logits, targets)
    return sigmoid_focal_loss(logits, targets, alpha=-1 if alpha is None else alpha,
                              gamma=gamma, reduction="mean")


def segmentation_loss(name: str, *, pos_weight: float | None = None, smooth: float = 1.0,
                      focal_gamma: float = 2.0, focal_alpha: float | None = None
                      ) -> LossFunction:
    """The loss function called ``name`` (see the module docstring), as ``f(logits, masks)``.

    ``pos_weight`` applies to ``bce`` and ``bce+dice``; ``smooth`` to the overlap
    losses; ``focal_*`` to ``focal``. Options a loss does not use are rejected,
    so a mistyped combination is not silently ignored.
    """
    key = name.lower().replace(" ", "")
    if key not in LOSS_NAMES:
        raise CnnlabError(
            f"segmentation loss {name!r} is unknown; use one of {', '.join(LOSS_NAMES)}")
    if pos_weight is not None and key not in ("bce", "bce+dice"):
        raise CnnlabError(f"pos_weight applies to bce and bce+dice only, not to {name!r}")
    if pos_weight is not None and pos_weight <= 0:
        raise CnnlabError(f"pos_weight must be > 0, got {pos_weight}")
    if key == "bce":
        return lambda logits, targets: bce_loss(logits, targets, pos_weight)
    if key in ("iou", "jaccard"):
        return lambda logits, targets: soft_iou_loss(logits, targets, smooth)
    if key == "dice":
        return lambda logits, targets: dice_loss(logits, targets, smooth)
    if key == "bce+dice":
        return lambda logits, targets: bce_dice_loss(logits, targets, pos_weight, smooth)
    if key == "lovasz":
        return lovasz_hinge_loss
    return lambda logits, targets: focal_loss(logits, targets, focal_gamma, focal_alpha)


class SegmentationTask(Task):
    """The trainer's task for binary masks: a loss by name; ``correct`` counts pixels.

    Pixel accuracy thresholds the probability at ``threshold`` (0.5); it is a
    weak metric when foreground is rare (all-background scores 1 - fraction),
    which is why :func:`segmentation_metrics` reports IoU and Dice.

    Example::

        task = SegmentationTask("iou")
        trainer = Trainer(unet_tiny(), config, train=train, val=val, task=task)
    """

    name = "segment"

    def __init__(self, loss: str = "bce", threshold: float = 0.5, **loss_options: Any) -> None:
        if not 0 < threshold < 1:
            raise CnnlabError(f"threshold must be in (0, 1), got {threshold}")
        self.loss_name = loss
        self.loss_options = loss_options
        self.loss_function = segmentation_loss(loss, **loss_options)
        self.threshold = threshold
        self.logit_threshold = math.log(threshold / (1 - threshold))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.loss_function(logits, targets)

    def correct(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        logits, targets = _flatten(logits, targets)
        predicted = logits > self.logit_threshold
        return (predicted == (targets > 0.5)).sum(), targets.numel()


# ----------------------------------------------------------------------------- metrics


@dataclass
class SegmentationMetrics:
    """Per-image counts and scores for one threshold; :meth:`summary` aggregates them.

    Conventions: an image whose true and predicted masks are both empty has
    IoU, Dice and boundary F-score 1 (nothing to find, nothing found).
    ``*_set`` metrics pool the pixels of all images (torchmetrics' binary
    JaccardIndex and Dice); ``*_mean`` average the per-image scores, so every
    image counts the same however large its object.
    """

    threshold: float
    tolerance_pixels: int
    true_positive: Tensor      # [N] pixels
    false_positive: Tensor
    false_negative: Tensor
    true_negative: Tensor
    boundary_f: Tensor         # [N]

    @property
    def iou(self) -> Tensor:
        union = self.true_positive + self.false_positive + self.false_negative
        return torch.where(union > 0, self.true_positive / union.clamp_min(1), 1.0)

    @property
    def dice(self) -> Tensor:
        total = 2 * self.true_positive + self.false_positive + self.false_negative
        return torch.where(total > 0, 2 * self.true_positive / total.clamp_min(1), 1.0)

    @property
    def predicted_area(self) -> Tensor:
        return self.true_positive + self.false_positive

    @property
    def true_area(self) -> Tensor:
        return self.true_positive + self.false_negative

    @property
    def pixels(self) -> Tensor:
        return (self.true_positive + self.false_positive + self.false_negative
                + self.true_negative)

    @property
    def pixel_accuracy(self) -> Tensor:
        return (self.true_positive + self.true_negative) / self.pixels

    @property
    def area_ratio(self) -> Tensor:
        """Predicted / true foreground area per image; NaN where the true mask is empty."""
        true = self.true_area.double()
        return torch.where(true > 0, self.predicted_area.double() / true.clamp_min(1),
                           torch.nan)

    def summary(self) -> dict[str, float]:
        tp, fp, fn = (self.true_positive.sum().item(), self.false_positive.sum().item(),
                      self.false_negative.sum().item())
        pixels = self.pixels.sum().item()
        ratios = self.area_ratio[~torch.isnan(self.area_ratio)]
        return {
            "images": len(self.true_positive),
            "threshold": self.threshold,
            "iou_mean": self.iou.double().mean().item(),
            "iou_set": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "dice_mean": self.dice.double().mean().item(),
            "dice_set": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "pixel_accuracy": (pixels - fp - fn) / pixels,
            "boundary_f_mean": self.boundary_f.double().mean().item(),
            "boundary_tolerance_pixels": self.tolerance_pixels,
            "predicted_fraction": (tp + fp) / pixels,
            "true_fraction": (tp + fn) / pixels,
            "area_ratio_set": (tp + fp) / (tp + fn) if tp + fn else math.nan,
            "area_ratio_median": ratios.median().item() if len(ratios) else math.nan,
        }


def _binary(values: Tensor, threshold: float | None) -> Tensor:
    """``[N, 1, H, W]`` or ``[N, H, W]`` -> bool ``[N, 1, H, W]``."""
    if values.ndim == 3:
        values = values[:, None]
    if values.ndim != 4:
        raise CnnlabError(f"masks must be [N, 1, H, W] or [N, H, W], got {tuple(values.shape)}")
    if threshold is None or values.dtype == torch.bool:
        return values > 0 if values.dtype != torch.bool else values
    return values >= threshold


def mask_boundary(mask: Tensor) -> Tensor:
    """Foreground pixels with a background 8-neighbour, bool ``[N, 1, H, W]``.

    The image border does not count as background: an object cut by the edge
    of the crop has no boundary along the edge (max_pool pads with -inf).
    """
    mask_float = mask.float()
    eroded = -F.max_pool2d(-mask_float, kernel_size=3, stride=1, padding=1)
    return mask & (eroded < 0.5)


def boundary_f_score(predicted: Tensor, truth: Tensor, tolerance_pixels: int = 2) -> Tensor:
    """Boundary F-score per image: boundaries matched within ``tolerance_pixels``.

    Precision is the share of predicted boundary pixels lying within the
    tolerance (a square neighbourhood, i.e. chessboard distance) of a true
    boundary pixel; recall the converse; F is their harmonic mean (the BF score
    of Csurka et al., 2013). Both boundaries empty: 1; one empty: 0.
    """
    predicted, truth = _binary(predicted, None), _binary(truth, None)
    if tolerance_pixels < 0:
        raise CnnlabError(f"boundary tolerance must be >= 0 pixels, got {tolerance_pixels}")
    predicted_edge, true_edge = mask_boundary(predicted), mask_boundary(truth)
    size = 2 * tolerance_pixels + 1

    def near(edge: Tensor) -> Tensor:
        return F.max_pool2d(edge.float(), size, stride=1, padding=tolerance_pixels) > 0

    predicted_count = predicted_edge.flatten(1).sum(1).double()
    true_count = true_edge.flatten(1).sum(1).double()
    precision = (predicted_edge & near(true_edge)).flatten(1).sum(1) / predicted_count.clamp_min(1)
    recall = (true_edge & near(predicted_edge)).flatten(1).sum(1) / true_count.clamp_min(1)
    f_score = torch.where(precision + recall > 0,
                          2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    both_empty = (predicted_count == 0) & (true_count == 0)
    return torch.where(both_empty, 1.0, f_score).float()


def segmentation_metrics(probabilities: Tensor, targets: Tensor, threshold: float = 0.5,
                         tolerance_pixels: int = 2) -> SegmentationMetrics:
    """Metrics of predicted probabilities (``sigmoid(logits)``) against 0/1 masks.

    Pixels with probability ``>= threshold`` are foreground. Example::

        metrics = segmentation_metrics(torch.sigmoid(logits), masks)
        metrics.summary()["iou_mean"], metrics.iou   # over the set, per image
    """
    predicted = _binary(probabilities, threshold)
    truth = _binary(targets, None)
    if predicted.shape != truth.shape:
        raise CnnlabError(f"predictions {tuple(predicted.shape)} and masks {tuple(truth.shape)}"
                          " differ in shape")
    flat_predicted, flat_truth = predicted.flatten(1), truth.flatten(1)
    return SegmentationMetrics(
        threshold=threshold,
        tolerance_pixels=tolerance_pixels,
        true_positive=(flat_predicted & flat_truth).sum(1),
        false_positive=(flat_predicted & ~flat_truth).sum(1),
        false_negative=(~flat_predicted & flat_truth).sum(1),
        true_negative=(~flat_predicted & ~flat_truth).sum(1),
        boundary_f=boundary_f_score(predicted, truth, tolerance_pixels),
    )


def iou_at_thresholds(probabilities: Tensor, targets: Tensor,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, float]:
    """Mean per-image IoU at each threshold, keyed ``"0.3"``..., to see how much 0.5 matters."""
    return {f"{t:g}": segmentation_metrics(probabilities, targets, t).iou.double().mean().item()
            for t in thresholds}


# ----------------------------------------------------------------------------- train / evaluate


@dataclass
class SegmentationSpec:
    """Everything needed to rebuild a segmentation run's data and model (stored in config.json)."""

    data: str = "seg-membrane"
    loss: str = "bce"
    model: str = "unet_tiny"
    model_options: dict | None = None
    size: int | None = None         # images resized to size x size (None: the dataset default)
    tile: int | None = None         # training images cut into tile x tile pieces (None: whole)
    validation: float = 0.2         # held-out fraction (the last slices for the membrane stack)
    augment: str | None = "standard"
    pos_weight: float | None = None
    mask_threshold: int | None = None
    foreground: int | None = None
    synthetic_count: int = 2000     # images in the synthetic set (train + validation)
    seed: int = 0


# Per-dataset defaults: membrane slices at half resolution (membranes stay 2-4 px
# wide) cut into 64x64 tiles; the synthetic set at 64x64; other folders at 128x128.
DATA_DEFAULTS = {
    "seg-membrane": {"size": 256, "tile": 64},
    "synthetic": {"size": 64, "tile": None},
}
OTHER_DEFAULTS = {"size": 128, "tile": None}


def load_split(spec: SegmentationSpec, data_root: str | os.PathLike | None = None):
    """Training and validation :class:`SegmentationSet` for a spec (training one tiled).

    The membrane slices come from one contiguous stack, so the validation
    slices are the *last* ones rather than a random draw (neighbouring slices
    are nearly identical); labels.csv sets are split by ``tile_group`` when
    present, so photographs of one tile never straddle the split.
    """
    from cnnlab.data.segmentation import (load_segmentation, split_segmentation,
                                          synthetic_shapes, tile_set)

    defaults = DATA_DEFAULTS.get(spec.data, OTHER_DEFAULTS)
    size = spec.size or defaults["size"]
    tile = spec.tile if spec.tile is not None else defaults["tile"]
    if spec.data == "synthetic":
        full = synthetic_shapes(spec.synthetic_count, size=size, seed=spec.seed)
    else:
        options: dict[str, Any] = {}
        if spec.mask_threshold is not None:
            options["threshold"] = spec.mask_threshold
        if spec.foreground is not None:
            options["foreground"] = spec.foreground
        full = load_segmentation(spec.data, size=size, data_root=data_root, **options)
    train, val = split_segmentation(full, spec.validation, seed=spec.seed,
                                    contiguous=spec.data == "seg-membrane")
    if tile and tile < size:
        train = tile_set(train, tile)
    return train, val


def predict_probabilities(model: nn.Module, images: Tensor, mean: tuple | None = None,
                          std: tuple | None = None, batch_size: int = 64,
                          device: str = "auto") -> Tensor:
    """Foreground probabilities ``[N, 1, H, W]`` (float, on the CPU) for uint8 images."""
    from cnnlab.data import ArrayDataset
    from cnnlab.train import predict_logits

    data = ArrayDataset(inputs=images, targets=torch.zeros(len(images)), classes=[], mean=mean,
                        std=std)
    return torch.sigmoid(predict_logits(model, data, batch_size=batch_size, device=device))


class _EpochLog(Callback):
    """Logs one fixed-column line per epoch and advances an optional rich progress bar."""

    def __init__(self, epochs: int, progress: bool, label: str, level: int = logging.INFO
                 ) -> None:
        super().__init__()
        self.level = level
        self.progress = None
        if progress:
            from rich.progress import Progress

            self.progress = Progress(transient=True)
            self.task_id = self.progress.add_task(label, total=epochs)

    def on_fit_start(self, trainer) -> None:
        if self.progress is not None:
            self.progress.start()

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        log.log(self.level, "epoch %3d  train_loss %.4f  val_loss %s  val_pixel_acc %s"
                "  lr %.2e  %.1f s  %.0f images/s", epoch, row["train_loss"],
                _fmt(row.get("val_loss")), _fmt(row.get("val_accuracy")), row["lr"],
                row["seconds"], row["images_per_second"])
        if self.progress is not None:
            self.progress.advance(self.task_id)

    def on_fit_end(self, trainer, result) -> None:
        if self.progress is not None:
            self.progress.stop()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def train_segmentation(data: str | os.PathLike = "seg-membrane", loss: str = "bce",
                       out: str | os.PathLike | None = None, epochs: int = 10, *,
                       model: str = "unet_tiny", model_options: dict | None = None,
                       size: int | None = None, tile: int | None = None,
                       validation: float = 0.2, augment: str | None = "standard",
                       pos_weight: float | None = None, mask_threshold: int | None = None,
                       foreground: int | None = None, synthetic_count: int = 2000,
                       batch_size: int = 16, lr: float = 3e-3, schedule: str = "cosine",
                       seed: int = 0, device: str = "auto", threads: int | None = None,
                       data_root: str | os.PathLike | None = None,
                       train_options: dict | None = None, progress: bool = False):
    """Train a U-Net on binary masks with the loss called ``loss``; return the RunResult.

    ``data``: ``"seg-membrane"`` (membrane = class 1), ``"defects"`` (defect
    masks binarised at 128), ``"synthetic"`` (seeded shapes, 1-40% foreground)
    or a folder of images/ + masks/. Defaults: membrane slices resized to 256
    and cut into 64x64 training tiles; synthetic 64x64; other folders 128x128.
    ``validation`` is the held-out fraction; metrics on it (IoU, Dice, boundary
    F, areas, IoU at thresholds 0.3-0.7) go to ``out/segmentation_metrics.json``
    and ``result.summary["segmentation"]``. ``out`` also receives the trainer's
    config.json (with a ``segmentation`` section that
    :func:`evaluate_segmentation` reads), history and checkpoint.
    ``train_options`` passes further :class:`~cnnlab.train.TrainConfig` fields.

    Example::

        result = train_segmentation("seg-membrane", "iou", "runs/membrane-iou", epochs=10)
        result.summary["segmentation"]["iou_mean"]
    """
    from cnnlab.train import TrainConfig

    spec = SegmentationSpec(data=str(data), loss=loss, model=model, model_options=model_options,
                            size=size, tile=tile, validation=validation, augment=augment,
                            pos_weight=pos_weight, mask_threshold=mask_threshold,
                            foreground=foreground, synthetic_count=synthetic_count, seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                         seed=seed, device=device, threads=threads, **(train_options or {}))
    return train_segmentation_spec(spec, config, out, data_root=data_root, progress=progress)


def train_segmentation_spec(spec: SegmentationSpec, config, out: str | os.PathLike | None, *,
                            resume: bool = False, callbacks: Sequence = (),
                            data_root: str | os.PathLike | None = None,
                            progress: bool = False):
    """:func:`train_segmentation` from a :class:`SegmentationSpec` and a ``TrainConfig``.

    The form a CLI calls: it builds the ``TrainConfig`` from its common options
    (``--epochs``, ``--batch-size``, ``--lr``...) and the spec from the
    segmentation ones (``--data``, ``--loss``, ``--model``...). ``resume=True``
    continues from ``out/checkpoint.pt``; ``callbacks`` are added to the
    trainer's. The fit subset (un-augmented training images measured each
    epoch) is capped at 256 tiles, because a segmentation forward pass costs
    far more than a classification one. Returns the RunResult, with the
    validation metrics in ``summary["segmentation"]``.
    """
    from dataclasses import replace

    train, val = load_split(spec, data_root)
    config = replace(config, fit_subset=min(config.fit_subset, 256, len(train)))
    result, probabilities = fit_segmentation(
        train, val, spec.loss, config, model=spec.model, model_options=spec.model_options,
        augment=spec.augment, pos_weight=spec.pos_weight, run_dir=out, resume=resume,
        callbacks=callbacks, progress=progress, extra_config={"segmentation": asdict(spec)})
    report = _metrics_report(probabilities, val.masks, spec)
    result.summary["segmentation"] = report
    if out is not None:
        write_json_atomic(Path(out) / METRICS_FILE, report)
    return result


def fit_segmentation(train, val, loss: str, config, *, model: str = "unet_tiny",
                     model_options: dict | None = None, augment: str | None = "standard",
                     pos_weight: float | None = None, run_dir: str | os.PathLike | None = None,
                     resume: bool = False, callbacks: Sequence = (),
                     extra_config: dict | None = None, progress: bool = False):
    """Train on one :class:`~cnnlab.data.segmentation.SegmentationSet`, validate on another.

    The lower-level step under :func:`train_segmentation`, for callers (the lab
    study) that build their own sets. Images are normalised with the training
    set's mean and standard deviation; ``augment`` names a joint augmentation
    preset (:func:`cnnlab.augment.joint.joint_augment`). Returns the trainer's
    RunResult and the validation probabilities ``[N, 1, H, W]``. ``resume``
    continues from ``run_dir/checkpoint.pt``.
    """
    import cnnlab.models.unet  # noqa: F401  (registers the U-Net names)
    from cnnlab.augment.joint import joint_augment
    from cnnlab.data.arrays import channel_statistics
    from cnnlab.models import build_model
    from cnnlab.train import Trainer

    task = SegmentationTask(loss, **({"pos_weight": pos_weight} if pos_weight else {}))
    statistics = channel_statistics(train.images)
    network = build_model(model, **(model_options or {}))
    trainer = Trainer(network, config, train=train.to_array_dataset(*statistics),
                      val=val.to_array_dataset(*statistics),
                      augment=joint_augment(augment) if augment else None, task=task,
                      run_dir=run_dir,
                      # A caller's own callbacks (the CLI's) print the epoch lines instead.
                      callbacks=[_EpochLog(config.epochs, progress, f"{loss} loss",
                                           logging.DEBUG if callbacks else logging.INFO),
                                 *callbacks],
                      extra_config={"task": "segment", **(extra_config or {}),
                                    "statistics": {"mean": statistics[0], "std": statistics[1]}})
    log.info("training %s with %s loss: %d training images %s, %d validation %s", model, loss,
             len(train), tuple(train.images.shape[-2:]), len(val), tuple(val.images.shape[-2:]))
    result = trainer.fit(resume=resume)
    probabilities = predict_probabilities(result.model, val.images, *statistics,
                                          device=config.device)
    return result, probabilities


def _metrics_report(probabilities: Tensor, masks: Tensor, spec: SegmentationSpec,
                    tolerance_pixels: int = 2) -> dict[str, Any]:
    metrics = segmentation_metrics(probabilities, masks, 0.5, tolerance_pixels)
    return {"task": "segment", "data": spec.data, "loss": spec.loss, "split": "validation",
            **metrics.summary(), "iou_at_thresholds": iou_at_thresholds(probabilities, masks)}


def evaluate_segmentation(run_dir: str | os.PathLike, *, data: str | None = None,
                          threshold: float = 0.5, tolerance_pixels: int = 2,
                          device: str = "auto", data_root: str | os.PathLike | None = None
                          ) -> dict[str, Any]:
    """Re-evaluate a run written by :func:`train_segmentation` on its validation split.

    Rebuilds the model from ``config.json`` and the weights from
    ``checkpoint.pt`` (loaded with ``weights_only=True``) and returns the
    summary of :func:`segmentation_metrics` plus ``iou_at_thresholds``.
    ``data`` evaluates on another dataset's validation split instead (same
    size and preprocessing as the run).
    """
    import cnnlab.models.unet  # noqa: F401  (registers the U-Net names)
    from cnnlab.models import build_model
    from cnnlab.train import CHECKPOINT_NAME, load_checkpoint_file

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise CnnlabError(f"{run_dir} has no config.json; is it a run folder from cnnlab train?")
    config = json.loads(config_path.read_text())
    if config.get("task") != "segment" or "segmentation" not in config:
        raise CnnlabError(f"{run_dir} is not a segmentation run (task {config.get('task')!r});"
                          " use cnnlab evaluate without --task segment")
    spec = SegmentationSpec(**config["segmentation"])
    if data is not None:
        spec.data = data
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.exists():
        raise CnnlabError(f"{run_dir} has no {CHECKPOINT_NAME}; the run did not finish an epoch")

    model = build_model(spec.model, **(spec.model_options or {}))
    model.load_state_dict(load_checkpoint_file(checkpoint)["model"])
    _, val = load_split(spec, data_root)
    statistics = config.get("statistics", {})
    mean, std = statistics.get("mean"), statistics.get("std")
    probabilities = predict_probabilities(model, val.images, tuple(mean) if mean else None,
                                          tuple(std) if std else None, device=device)
    metrics = segmentation_metrics(probabilities, val.masks, threshold, tolerance_pixels)
    return {"task": "segment", "run": str(run_dir), "data": spec.data, "loss": spec.loss,
            "split": "validation", **metrics.summary(),
            "iou_at_thresholds": iou_at_thresholds(probabilities, val.masks)}
