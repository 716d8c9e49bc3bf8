"""A picture of one unit's receptive field: the theoretical box and the measured gradient.

The theoretical field says which pixels a unit *can* see. The effective
field (Luo et al., 2016) says how much each pixel *does* matter: the
magnitude of the unit's gradient with respect to the input, which in trained
and untrained networks alike concentrates near the centre of the box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab._util import CnnlabError, atomic_path
from cnnlab.inspect._analyse import find_module, inspect, layer_names, parse_input_shape

log = logging.getLogger(__name__)


@dataclass
class FieldPicture:
    """What the picture shows, as numbers. Boxes are (first, last) pixel per dimension."""

    path: Path
    layer: str
    unit: tuple[int, ...]
    receptive_field: tuple[float, ...]
    theoretical_box: list[tuple[int, int]]  # may reach past the image (padding)
    gradient_box: list[tuple[int, int]] | None  # pixels with a non-zero gradient
    effective_box: list[tuple[int, int]] | None  # smallest centred box holding `mass` of it
    mass: float
    mass_inside_theoretical: float  # share of |gradient| inside the theoretical box: 1.0
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "layer": self.layer, "unit": list(self.unit),
            "receptive_field": list(self.receptive_field),
            "theoretical_box": [list(b) for b in self.theoretical_box],
            "gradient_box": None if self.gradient_box is None
            else [list(b) for b in self.gradient_box],
            "effective_box": None if self.effective_box is None
            else [list(b) for b in self.effective_box],
            "mass": self.mass, "mass_inside_theoretical": self.mass_inside_theoretical,
            "samples": self.samples,
        }


def gradient_map(model: nn.Module, inputs: torch.Tensor, layer: str,
                 unit: tuple[int, ...]) -> torch.Tensor:
    """Mean over samples of |d(unit)/d(input)|, summed over input channels: [H, W].

    The unit is one position of ``layer``'s output with its channels summed
    (as a row's field is the union over its channels). Weights get no
    gradient; the model runs in eval mode and its mode is restored.
    """
    module = find_module(model, layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, output: captured.append(output))
    training = model.training
    model.eval()
    heat = torch.zeros(inputs.shape[2:], dtype=torch.float64)
    try:
        for sample in inputs:
            captured.clear()
            sample = sample.unsqueeze(0).clone().requires_grad_(True)
            with torch.enable_grad():
                model(sample)
                output = captured[0]
                if output.ndim != 2 + len(unit):
                    raise CnnlabError(f"layer {layer!r} outputs shape {tuple(output.shape)}; "
                                      "pick a layer with spatial positions to draw a unit")
                selected = output[(0, slice(None), *unit)].sum()
                (gradient,) = torch.autograd.grad(selected, sample)
            heat += gradient[0].abs().sum(0).double().cpu()
    finally:
        handle.remove()
        model.train(training)
    return heat / len(inputs)


def draw_receptive_field(
    model: nn.Module,
    input_shape: str | tuple[int, ...],
    layer: str,
    path: str | Path,
    *,
    unit: tuple[int, ...] | None = None,
    image: str | Path | torch.Tensor | None = None,
    samples: int = 8,
    mass: float = 0.95,
    seed: int = 0,
    title: str | None = None,
) -> FieldPicture:
    """Write a PNG of a unit's theoretical and effective receptive field on an input image.

    ``layer`` is a submodule name (``layer3``, ``features.4``; list them with
    :func:`layer_names`); ``unit`` its output position (default: the centre).
    ``image`` is a file or a [C, H, W] tensor in [0, 1], resized to the input
    size; without one the gradient is averaged over ``samples`` random
    normal inputs, as in the effective-receptive-field literature. The model
    keeps its weights (random unless you loaded trained ones).
    """
    shape = parse_input_shape(input_shape)
    if len(shape) != 3:
        raise CnnlabError(f"--draw needs an image input CxHxW, got {input_shape!r}")
    if layer not in layer_names(model):
        find_module(model, layer)  # raises with close matches
    result = inspect(model, shape)
    row = result.row(layer)
    if row.spans is None or len(row.spans) != 2:
        raise CnnlabError(f"layer {layer!r} has no two-dimensional receptive field to draw "
                          f"({row.field_unknown or 'its output has no positions'})")
    unit = row.centre_unit() if unit is None else tuple(unit)
    box = row.field_box(unit)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "meta":
        raise CnnlabError("the model has no weights (built on the meta device); build it on "
                          "the CPU to measure gradients")
    background, inputs = _inputs(image, shape, samples, seed)
    heat = gradient_map(model, inputs.to(device), layer, unit)

    total = float(heat.sum())
    gradient_box = _support_box(heat)
    effective_box = _centred_box(heat, box, mass) if total > 0 else None
    inside = _box_sum(heat, box) / total if total > 0 else 0.0
    picture = FieldPicture(
        path=Path(path), layer=layer, unit=unit,
        receptive_field=tuple(float(s.size) for s in row.spans), theoretical_box=box,
        gradient_box=gradient_box, effective_box=effective_box, mass=mass,
        mass_inside_theoretical=inside, samples=len(inputs),
    )
    _plot(picture, background, heat, title or f"{result.model}: {layer}, unit {unit}")
    return picture


def _inputs(image: Any, shape: tuple[int, ...], samples: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    channels, height, width = shape
    if image is None:
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn((max(samples, 1), channels, height, width), generator=generator)
        return torch.full((height, width, 3), 0.85), inputs
    if isinstance(image, (str, Path)):
        from PIL import Image

        try:
            with Image.open(image) as opened:
                picture = opened.convert("L" if channels == 1 else "RGB")
                picture = picture.resize((width, height))
                import numpy as np

                array = torch.from_numpy(np.asarray(picture).copy()).float() / 255
        except OSError as error:
            raise CnnlabError(f"--image {image}: cannot read it as an image ({error})") from error
        tensor = array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)
    else:
        tensor = image.float()
        if tensor.shape[-2:] != (height, width):
            tensor = torch.nn.functional.interpolate(tensor.unsqueeze(0), (height, width),
                                                     mode="bilinear").squeeze(0)
    if tensor.shape[0] != channels:
        raise CnnlabError(f"the image has {tensor.shape[0]} channels; the input needs {channels}")
    shown = tensor.permute(1, 2, 0)
    shown = shown.expand(-1, -1, 3) if channels == 1 else shown[..., :3]
    return shown, tensor.unsqueeze(0)


def _support_box(heat: torch.Tensor) -> list[tuple[int, int]] | None:
    rows = torch.nonzero(heat.sum(1) > 0).flatten()
    columns = torch.nonzero(heat.sum(0) > 0).flatten()
    if len(rows) == 0:
        return None
    return [(int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))]


def _box_sum(heat: torch.Tensor, box: list[tuple[int, int]]) -> float:
    (top, bottom), (left, right) = box
    height, width = heat.shape
    return float(heat[max(top, 0):min(bottom, height - 1) + 1,
                      max(left, 0):min(right, width - 1) + 1].sum())


def _centred_box(heat: torch.Tensor, box: list[tuple[int, int]],
                 mass: float) -> list[tuple[int, int]]:
    """Grow a square around the field's centre until it holds ``mass`` of the gradient."""
    total = float(heat.sum())
    centre_row = (box[0][0] + box[0][1]) // 2
    centre_column = (box[1][0] + box[1][1]) // 2
    radius = 0
    limit = max(heat.shape) + max(abs(centre_row), abs(centre_column))
    while radius <= limit:
        candidate = [(centre_row - radius, centre_row + radius),
                     (centre_column - radius, centre_column + radius)]
        if _box_sum(heat, candidate) >= mass * total:
            return candidate
        radius += 1
    return [(0, heat.shape[0] - 1), (0, heat.shape[1] - 1)]


def _plot(picture: FieldPicture, background: torch.Tensor, heat: torch.Tensor,
          title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(5.6, 5.2), dpi=120)
    axes = figure.add_subplot()
    height, width = heat.shape
    axes.imshow(background.clamp(0, 1).numpy(), extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    peak = float(heat.max()) or 1.0
    overlay = (heat / peak).float().numpy()
    # Transparency follows the square root of the gradient so that the faint tails
    # of the effective field stay visible without hiding the image under the peak.
    axes.imshow(overlay, cmap="magma", alpha=0.85 * overlay ** 0.5, vmin=0, vmax=1,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    (top, bottom), (left, right) = picture.theoretical_box
    axes.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                             fill=False, edgecolor="#1f77b4", linewidth=2, linestyle="--",
                             label=f"theoretical field {_size(picture.theoretical_box)}"))
    if picture.effective_box is not None:
        (top, bottom), (left, right) = picture.effective_box
        axes.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                                 fill=False, edgecolor="#2ca02c", linewidth=2,
                                 label=f"{picture.mass:.0%} of |gradient| "
                                 f"{_size(picture.effective_box)}"))
    (top, bottom), (left, right) = picture.theoretical_box
    axes.set_xlim(min(left, 0) - 1.5, max(right, width - 1) + 1.5)
    axes.set_ylim(max(bottom, height - 1) + 1.5, min(top, 0) - 1.5)
    axes.axhline(-0.5, color="0.4", linewidth=0.6)
    axes.axhline(height - 0.5, color="0.4", linewidth=0.6)
    axes.axvline(-0.5, color="0.4", linewidth=0.6)
    axes.axvline(width - 0.5, color="0.4", linewidth=0.6)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(f"input x (pixels); gradient averaged over {picture.samples} input(s)",
                    fontsize=8)
    axes.legend(loc="lower left", fontsize=8, framealpha=0.85)
    with atomic_path(picture.path) as temporary:
        figure.savefig(temporary, format="png")
    log.info("wrote %s", picture.path)


def _size(box: list[tuple[int, int]]) -> str:
    return "x".join(str(last - first + 1) for first, last in box) + " px"
