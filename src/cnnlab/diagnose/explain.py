"""Why did the model say that? Grad-CAM heat maps and the most confused pairs of classes.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional
layer's output by the spatial mean of the gradient of one class score with
respect to it, sums the weighted channels, keeps the positive part and
scales the map to [0, 1]: bright where evidence *for* that class lies.

Two backends compute the same map:

- ``grad-cam``: the maintained ``grad-cam`` package (``pip install
  cnnlab[explain]``), used when it is installed;
- ``hooks``: a few lines over torch forward hooks, the fallback, so that
  explanations work without the optional package. It follows the package's
  arithmetic step for step (scale to [0, 1] at the layer's resolution,
  bilinear resize to the image, scale again), and a test checks that the two
  agree.

Example::

    result = grad_cam(model, images, mean=train.mean, std=train.std)
    overlays = overlay_heatmaps(images, result.maps)
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab._util import CnnlabError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "grad-cam", "hooks")
SCALE_EPSILON = 1e-7  # the package's guard against an all-zero map; matched for agreement


@dataclass
class CamResult:
    """Grad-CAM maps for a batch: ``maps`` [B, H, W] float32 in [0, 1], one per image.

    ``target_classes`` are the classes explained (the predictions unless
    given); ``probabilities`` the softmax probability of each prediction.
    """

    maps: np.ndarray
    target_classes: list[int]
    predictions: list[int]
    probabilities: list[float]
    layer: str
    backend: str


def grad_cam_available() -> bool:
    """Whether the ``grad-cam`` package (module ``pytorch_grad_cam``) is installed."""
    return importlib.util.find_spec("pytorch_grad_cam") is not None


def last_conv_layer(model: nn.Module) -> str:
    """The name of the last ``nn.Conv2d`` in ``model`` (the usual Grad-CAM layer)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise CnnlabError(f"{type(model).__name__} has no Conv2d layer; pass layer= with the "
                          "name of a layer whose output is [B, C, H, W]")
    return names[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, *, layer: str | None = None,
             target_classes: Sequence[int] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             backend: str = "auto") -> CamResult:
    """Grad-CAM maps of ``images`` for ``target_classes`` (default: each image's prediction).

    ``images``: uint8 [B, C, H, W] (scaled to [0, 1]) or floats already in
    [0, 1]; ``mean``/``std``: the normalisation the model was trained with.
    ``layer``: a module name from ``model.named_modules()`` (default: the last
    Conv2d). ``backend``: ``auto`` (the grad-cam package if installed, else
    torch hooks), ``grad-cam`` or ``hooks``. The model runs in eval mode on
    the device of its parameters; its mode is restored.
    """
    if backend not in BACKENDS:
        raise CnnlabError(f"backend {backend!r} is unknown; use one of {BACKENDS}")
    if backend == "auto":
        backend = "grad-cam" if grad_cam_available() else "hooks"
    if backend == "grad-cam" and not grad_cam_available():
        raise CnnlabError("backend 'grad-cam' needs the grad-cam package: "
                          "pip install 'cnnlab[explain]' (or use backend='hooks')")
    if images.dim() != 4:
        raise CnnlabError(f"grad_cam needs a batch [B, C, H, W], got shape {tuple(images.shape)}")
    layer = layer or last_conv_layer(model)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise CnnlabError(f"layer {layer!r} is not in the model; conv layers: "
                          f"{[n for n, m in modules.items() if isinstance(m, nn.Conv2d)]}")

    device = next(model.parameters()).device
    inputs = _normalised(images, mean, std).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probabilities = model(inputs).float().softmax(dim=1)
        confidence, predictions = probabilities.max(dim=1)
        targets = predictions.tolist() if target_classes is None else [int(c) for c in
                                                                         target_classes]
        if len(targets) != len(inputs):
            raise CnnlabError(f"got {len(targets)} target classes for {len(inputs)} images")
        if backend == "grad-cam":
            maps = _package_cam(model, modules[layer], inputs, targets)
        else:
            maps = _hooks_cam(model, modules[layer], inputs, targets)
    finally:
        model.zero_grad(set_to_none=True)  # leave no Grad-CAM gradients on the parameters
        model.train(was_training)
    return CamResult(maps.astype(np.float32), targets, predictions.tolist(),
                     confidence.tolist(), layer, backend)


def _normalised(images: torch.Tensor, mean, std) -> torch.Tensor:
    inputs = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if mean is not None:
        shape = (1, -1, 1, 1)
        inputs = (inputs - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    return inputs


def _package_cam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor,
                 targets: list[int]) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=inputs, targets=[ClassifierOutputTarget(c) for c in targets])


def _hooks_cam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor,
               targets: list[int]) -> np.ndarray:
    captured: dict[str, torch.Tensor] = {}

    def keep_output(module, args, output):
        captured["activations"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradients", grad))

    handle = layer.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            logits = model(inputs)
            index = torch.tensor(targets, device=logits.device)
            score = logits.gather(1, index[:, None]).sum()  # each image's own class score
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
    if "gradients" not in captured:
        raise CnnlabError("the chosen layer's output does not reach the class scores "
                          "(no gradient flowed back to it); pick a layer on the path to the head")
    activations = captured["activations"].detach().float()  # [B, K, h, w]
    gradients = captured["gradients"].detach().float()
    if activations.dim() != 4:
        raise CnnlabError(f"Grad-CAM needs a layer with [B, C, H, W] outputs, got "
                          f"{tuple(activations.shape)}")
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # [B, K, 1, 1]
    cam = (weights * activations).sum(dim=1).clamp_min(0)  # [B, h, w]
    cam = _scale(cam)
    H, W = inputs.shape[-2:]
    cam = F.interpolate(cam[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    return _scale(cam.clamp_min(0)).cpu().numpy()


def _scale(maps: torch.Tensor) -> torch.Tensor:
    low = maps.flatten(1).min(dim=1).values.view(-1, 1, 1)
    shifted = maps - low
    high = shifted.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return shifted / (SCALE_EPSILON + high)


def central_mass(maps: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Share of each map's total weight inside the central box of ``fraction`` of each side.

    With ``fraction=0.5`` the box covers a quarter of the image, so a map
    spread evenly gives 0.25; a map on a centred object gives more.
    """
    _, H, W = maps.shape
    top, left = round(H * (1 - fraction) / 2), round(W * (1 - fraction) / 2)
    inside = maps[:, top:H - top, left:W - left].sum(axis=(1, 2))
    total = maps.sum(axis=(1, 2))
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > 0)


def overlay_heatmaps(images: torch.Tensor, maps: np.ndarray, alpha: float = 0.5) -> torch.Tensor:
    """uint8 [B, 3, H, W] images with their maps blended in (jet colours), for image grids."""
    from matplotlib import colormaps

    if images.dtype != torch.uint8:
        raise CnnlabError("overlay_heatmaps needs uint8 images, as the data layer stores them")
    colours = colormaps["jet"](np.clip(maps, 0, 1))[..., :3]  # [B, H, W, 3] in [0, 1]
    heat = torch.from_numpy(colours).permute(0, 3, 1, 2).float() * 255
    base = images.float()
    if base.shape[1] == 1:
        base = base.expand(-1, 3, -1, -1)
    return ((1 - alpha) * base + alpha * heat).round().clamp(0, 255).to(torch.uint8)


# ---- confusion -----------------------------------------------------------------------------

def confusion_matrix(targets: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] as an int64 array."""
    true = np.asarray(targets.cpu() if hasattr(targets, "cpu") else targets, dtype=np.int64)
    predicted = np.asarray(predictions.cpu() if hasattr(predictions, "cpu") else predictions,
                           dtype=np.int64)
    if true.shape != predicted.shape:
        raise CnnlabError(f"{len(true)} targets but {len(predicted)} predictions")
    outside = (true < 0) | (true >= num_classes) | (predicted < 0) | (predicted >= num_classes)
    if outside.any():
        raise CnnlabError(f"class indices must lie in [0, {num_classes}); found "
                          f"{np.unique(np.concatenate([true[outside], predicted[outside]]))}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def most_confused_pairs(confusion: np.ndarray, classes: Sequence[str], top: int = 5
                        ) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most errors, largest first.

    Each pair: ``true``, ``predicted``, ``count``, ``share_of_true`` (of that
    true class's samples) and ``reverse_count`` (the errors the other way), so
    a symmetric confusion (cat/dog) is told from a one-sided one.
    """
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    cells = [(int(confusion[i, j]), i, j) for i in range(len(classes))
             for j in range(len(classes)) if i != j and confusion[i, j] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": count,
             "share_of_true": float(count / totals[i]) if totals[i] else 0.0,
             "reverse_count": int(confusion[j, i])} for count, i, j in cells[:top]]


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)
