"""How accuracy holds up when test images are perturbed: noise, shifts, rotations and FGSM.

Every perturbation works on float images in [0, 1] (before normalisation),
so strengths have the same units whatever the model's normalisation:

- ``noise``: additive Gaussian noise of standard deviation ``sigma`` in
  [0, 1] intensity units (0.05 is about 13 grey levels), clipped to [0, 1];
- ``shift``: every image moved by ``pixels`` along both axes, in a random
  direction per axis; the border pixels repeat into the uncovered edge (the
  ``nearest`` fill of Keras' ImageDataGenerator, so an augmented model has
  seen such edges);
- ``rotation``: every image turned by ``degrees`` about its centre, clockwise
  or anticlockwise at random, bilinear, with the same edge fill;
- ``fgsm``: the one-step fast gradient sign method (Goodfellow et al., 2015):
  ``x + epsilon * sign(grad_x loss)``, clipped to [0, 1]. It is a white-box
  attack: the gradient comes from the model being attacked.

Random choices (noise, directions) come from a generator seeded per
perturbation, so two models are measured on exactly the same images.

Example::

    rows = perturbed_accuracy(model, test, [Perturbation("fgsm", 2 / 255)])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab._util import CnnlabError, resolve_device
from cnnlab.data import ArrayDataset
from cnnlab.train import ClassificationTask, Task

log = logging.getLogger(__name__)

KINDS = ("clean", "noise", "shift", "rotation", "fgsm")
UNITS = {"clean": "", "noise": "sigma (0-1 intensity)", "shift": "pixels", "rotation": "degrees",
         "fgsm": "epsilon (0-1 intensity)"}


@dataclass(frozen=True)
class Perturbation:
    """One kind of perturbation at one strength (units in :data:`UNITS`)."""

    kind: str
    strength: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CnnlabError(f"perturbation {self.kind!r} is unknown; use one of {KINDS}")
        if self.strength < 0 or not math.isfinite(self.strength):
            raise CnnlabError(f"perturbation {self.kind} needs a finite strength >= 0, got "
                              f"{self.strength}")

    @property
    def label(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind == "fgsm":
            return f"FGSM eps {self.strength * 255:g}/255"
        if self.kind == "noise":
            return f"noise sigma {self.strength:g}"
        if self.kind == "shift":
            return f"shift {self.strength:g} px"
        return f"rotation {self.strength:g} deg"


# Strengths chosen to span "barely visible" to "obvious" on 32x32 images.
DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("clean"),
    *(Perturbation("noise", sigma) for sigma in (0.02, 0.05, 0.1)),
    *(Perturbation("shift", pixels) for pixels in (1, 2, 4)),
    *(Perturbation("rotation", degrees) for degrees in (5, 10, 20)),
    *(Perturbation("fgsm", level / 255) for level in (1, 2, 4, 8)),
)


# ---- the perturbations -------------------------------------------------------------------

def gaussian_noise(images: torch.Tensor, sigma: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` (float [B, C, H, W] in [0, 1]) plus N(0, sigma^2) noise, clipped to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
    return (images + sigma * noise).clamp(0.0, 1.0)


def translate(images: torch.Tensor, pixels: int | Sequence[tuple[int, int]],
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by whole pixels; edge pixels repeat into the uncovered border.

    ``pixels``: one count (each image moves that far along x and along y,
    each direction drawn at random) or one ``(dx, dy)`` per image (positive:
    content moves right / down). Integer shifts copy pixels exactly.
    """
    B, _, H, W = images.shape
    if isinstance(pixels, (int, float)):
        signs = torch.randint(0, 2, (B, 2), generator=generator) * 2 - 1
        offsets = signs * int(pixels)
    else:
        offsets = torch.as_tensor(list(pixels), dtype=torch.long)
        if offsets.shape != (B, 2):
            raise CnnlabError(f"translate needs one (dx, dy) per image: {B} pairs, got shape "
                              f"{tuple(offsets.shape)}")
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # The grid maps output to input positions: content moves by +d when we sample at -d.
    theta[:, 0, 2] = -offsets[:, 0].double() * 2 / W
    theta[:, 1, 2] = -offsets[:, 1].double() * 2 / H
    return _resample(images, theta, "nearest")


def rotate(images: torch.Tensor, degrees: float | Sequence[float],
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image about its centre; edge pixels fill the corners.

    ``degrees``: one angle (each image turns that far, in a random direction)
    or one signed angle per image.
    """
    B, _, H, W = images.shape
    if isinstance(degrees, (int, float)):
        signs = torch.randint(0, 2, (B,), generator=generator).double() * 2 - 1
        angles = signs * float(degrees)
    else:
        angles = torch.as_tensor(list(degrees), dtype=torch.float64)
    radians = torch.deg2rad(angles)
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    # Normalised coordinates stretch non-square images; correct by the aspect ratio.
    aspect = W / H
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(radians), -torch.sin(radians) / aspect
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(radians) * aspect, torch.cos(radians)
    return _resample(images, theta, "bilinear")


def _resample(images: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def fgsm(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, epsilon: float, *,
         mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
         task: Task | None = None) -> torch.Tensor:
    """One fast-gradient-sign step: ``clip(x + epsilon * sign(grad_x loss), 0, 1)``.

    ``images`` are float [B, C, H, W] in [0, 1]; ``mean``/``std`` (shape
    [1, C, 1, 1]) normalise them the way the model was trained. The loss is
    the task's (cross-entropy by default), the model runs in eval mode (its
    mode is restored) and no parameter gradient is accumulated. Each pixel
    moves by at most ``epsilon``.
    """
    if epsilon < 0:
        raise CnnlabError(f"FGSM epsilon must be >= 0, got {epsilon}")
    task = task or ClassificationTask()
    was_training = model.training
    model.eval()
    try:
        inputs = images.detach().clone().requires_grad_(True)
        normalised = inputs if mean is None else (inputs - mean) / std
        with torch.enable_grad():
            loss = task.loss(model(normalised).float(), targets)
            (gradient,) = torch.autograd.grad(loss, inputs)
    finally:
        model.train(was_training)
    return (images + epsilon * gradient.sign()).clamp(0.0, 1.0).detach()


def perturb(perturbation: Perturbation, images: torch.Tensor, targets: torch.Tensor,
            model: nn.Module, generator: torch.Generator, mean=None, std=None,
            task: Task | None = None) -> torch.Tensor:
    """Apply one :class:`Perturbation` to a batch of float images in [0, 1]."""
    kind, strength = perturbation.kind, perturbation.strength
    if kind == "clean" or strength == 0:
        return images
    if kind == "noise":
        return gaussian_noise(images, strength, generator)
    if kind == "shift":
        return translate(images, round(strength), generator)
    if kind == "rotation":
        return rotate(images, strength, generator)
    return fgsm(model, images, targets, strength, mean=mean, std=std, task=task)


# ---- measuring ---------------------------------------------------------------------------

@dataclass
class RobustnessRow:
    kind: str
    strength: float
    label: str
    accuracy: float
    loss: float
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def perturbed_accuracy(model: nn.Module, data: ArrayDataset,
                       perturbations: Sequence[Perturbation] = DEFAULT_PERTURBATIONS, *,
                       task: Task | None = None, batch_size: int = 256,
                       device: str | torch.device = "auto", seed: int = 0) -> list[RobustnessRow]:
    """Accuracy and loss of ``model`` on ``data`` under each perturbation.

    ``data`` holds uint8 images with the normalisation statistics the model
    was trained with (``data.mean``/``data.std``). Every perturbation is
    drawn from a generator seeded with ``seed``, so two models see the same
    noisy, shifted and rotated images (FGSM depends on each model's own
    gradient, as it should).
    """
    if not data.is_image:
        raise CnnlabError("perturbed_accuracy needs uint8 images [N, C, H, W]")
    device = resolve_device(device) if isinstance(device, str) else device
    task = task or ClassificationTask()
    mean = std = None
    if data.mean is not None:
        mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for perturbation in perturbations:
            generator = torch.Generator().manual_seed(seed)
            loss_sum, correct_sum = 0.0, 0
            for start in range(0, len(data), batch_size):
                images = data.inputs[start:start + batch_size].to(device).float() / 255.0
                targets = data.targets[start:start + batch_size].to(device)
                perturbed = perturb(perturbation, images, targets, model, generator, mean, std,
                                    task)
                with torch.no_grad():
                    normalised = perturbed if mean is None else (perturbed - mean) / std
                    logits = model(normalised).float()
                    loss_sum += float(task.eval_loss(logits, targets)) * len(images)
                    correct, _ = task.correct(logits, targets)
                    correct_sum += int(correct)
            count = max(1, len(data))
            rows.append(RobustnessRow(perturbation.kind, perturbation.strength,
                                      perturbation.label, correct_sum / count, loss_sum / count,
                                      len(data)))
            log.debug("%s: accuracy %.3f", perturbation.label, rows[-1].accuracy)
    finally:
        model.train(was_training)
    return rows
