"""Figures of a monitored run: gradient-norm heat maps, update ratios, activation histograms.

Each ``save_*`` function takes :class:`MonitorData`, writes one PNG with
matplotlib's object API on the Agg canvas (no ``pyplot`` state) and returns
its path. Heat-map rows run from the input (top) to the output (bottom);
columns are the sampled steps, spaced by their true step numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from cnnlab._util import atomic_path
from cnnlab.diagnose.monitor import MonitorData

DPI = 100
UPDATE_RATIO_GUIDE = 1e-3  # a common rule of thumb for a healthy step size, drawn for reference
MISSING_COLOUR = "#d9d9d9"


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Column boundaries half way between sampled steps (a single sample gets width 1)."""
    steps = steps.astype(np.float64)
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    middle = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (middle[0] - steps[0])], middle,
                           [steps[-1] + (steps[-1] - middle[-1])]])


def _short(name: str, limit: int = 28) -> str:
    name = name.removesuffix(".weight")
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def _positive(values: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_where(~np.isfinite(values) | (values <= 0), values)


def gradient_norm_range(panels: Mapping[str, MonitorData]) -> tuple[float, float]:
    """One log colour range for several runs, so that their heat maps compare."""
    values = [d.grad_norm[:, d.weight_layers] for d in panels.values() if len(d)]
    values = np.concatenate([v.ravel() for v in values]) if values else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return 1e-8, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low / 10, high * 10)


def draw_gradient_heatmap(axes, data: MonitorData, title: str = "",
                          norm: LogNorm | None = None, labels: bool = True):
    """Draw gradient norm by layer (rows, input at the top) and step onto ``axes``."""
    layers = data.weight_layers or list(range(len(data.parameters)))
    if not len(data) or not layers:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(title)
        return None
    values = _positive(data.grad_norm[:, layers].T)  # [L, S]
    norm = norm or LogNorm(*gradient_norm_range({"": data}))
    axes.set_facecolor(MISSING_COLOUR)
    mesh = axes.pcolormesh(_step_edges(data.steps), np.arange(len(layers) + 1), values,
                           norm=norm, cmap="magma", shading="flat")
    axes.set_ylim(len(layers), 0)
    axes.set_xlabel("training step")
    if labels and len(layers) <= 40:
        every = max(1, math.ceil(len(layers) / 20))
        ticks = list(range(0, len(layers), every))
        axes.set_yticks([t + 0.5 for t in ticks])
        axes.set_yticklabels([_short(data.parameters[layers[t]]) for t in ticks], fontsize=6)
    else:
        axes.set_ylabel("layer (input at the top)")
    if data.nonfinite:
        axes.axvline(data.nonfinite["step"], color="cyan", linestyle="--", linewidth=1)
    axes.set_title(title, fontsize=9)
    return mesh


def save_gradient_heatmap(data: MonitorData, path: str | os.PathLike, title: str = ""
                          ) -> Path:
    """Gradient norm by layer and step on a log colour scale (one run)."""
    figure = Figure(figsize=(9, 4.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    mesh = draw_gradient_heatmap(axes, data, title or "gradient norm by layer and step")
    if mesh is not None:
        figure.colorbar(mesh, ax=axes, label="gradient norm (log scale)")
    return _save(figure, path)


def save_gradient_heatmaps(panels: Mapping[str, MonitorData], path: str | os.PathLike,
                           columns: int = 3, title: str = "") -> Path:
    """Several runs' heat maps side by side on one shared log colour scale."""
    count = max(1, len(panels))
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.4 * columns + 1, 2.8 * rows + 0.6), dpi=DPI,
                    layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    norm = LogNorm(*gradient_norm_range(panels))
    mesh = None
    for axes, (label, data) in zip(grid, panels.items()):
        drawn = draw_gradient_heatmap(axes, data, label, norm, labels=False)
        mesh = drawn if drawn is not None else mesh
    for axes in grid[len(panels):]:
        axes.set_visible(False)
    if mesh is not None:
        figure.colorbar(mesh, ax=list(grid[:len(panels)]), label="gradient norm (log scale)",
                        shrink=0.8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def save_update_ratios(data: MonitorData, path: str | os.PathLike, title: str = "") -> Path:
    """Update-to-weight ratio per layer over the run, coloured from input (dark) to output."""
    figure = Figure(figsize=(9, 4), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    layers = data.weight_layers or list(range(len(data.parameters)))
    colours = [(0.1 + 0.8 * i / max(1, len(layers) - 1)) for i in range(len(layers))]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for colour, index in zip(colours, layers):
        values = _positive(data.update_ratio[:, index])
        axes.plot(data.steps, values, color=cmap(colour), linewidth=1,
                  label=_short(data.parameters[index]))
    if len(data):
        axes.axhline(UPDATE_RATIO_GUIDE, color="grey", linestyle=":", linewidth=1)
        axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("||update|| / ||weight||")
    axes.grid(alpha=0.3)
    if 0 < len(layers) <= 12:
        axes.legend(fontsize="x-small", ncol=2)
    axes.set_title(title or "update-to-weight ratio per layer (dark: input, light: output; "
                   "dotted: 1e-3)", fontsize=9)
    return _save(figure, path)


def _histogram_layers(data: MonitorData, count: int) -> list[int]:
    total = len(data.activations)
    if total <= count:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def save_activation_histograms(data: MonitorData, path: str | os.PathLike,
                               layers: int = 4, title: str = "") -> Path:
    """Activation value distributions over the run for a few layers (first to last)."""
    chosen = _histogram_layers(data, layers)
    figure = Figure(figsize=(9, 2.4 * max(1, math.ceil(len(chosen) / 2)) + 0.4), dpi=DPI,
                    layout="constrained")
    grid = figure.subplots(max(1, math.ceil(len(chosen) / 2)), 2, squeeze=False).ravel()
    mesh = None
    for axes, index in zip(grid, chosen):
        fractions = _positive(data.histograms[:, index, :].T.astype(np.float64))  # [bins, S]
        if not len(data):
            continue
        axes.set_facecolor(MISSING_COLOUR)
        mesh = axes.pcolormesh(_step_edges(data.steps), data.histogram_edges[index], fractions,
                               norm=LogNorm(1e-4, 1.0), cmap="viridis", shading="flat")
        kind = data.activation_kinds[index]
        axes.set_title(f"{_short(data.activations[index])} ({kind})", fontsize=8)
        axes.set_xlabel("training step", fontsize=8)
        axes.set_ylabel("output value", fontsize=8)
        axes.tick_params(labelsize=7)
    for axes in grid[len(chosen):]:
        axes.set_visible(False)
    if not chosen:
        grid[0].text(0.5, 0.5, "no activation layers were watched", ha="center", va="center")
    if mesh is not None:
        figure.colorbar(mesh, ax=list(grid[:len(chosen)]), label="fraction of values",
                        shrink=0.8)
    figure.suptitle(title or "activation histograms over training (end bins also count "
                    "values beyond them)", fontsize=9)
    return _save(figure, path)


FIGURE_NAMES = ("gradient_heatmap.png", "update_ratios.png", "activation_histograms.png")


def save_monitor_figures(data: MonitorData, folder: str | os.PathLike) -> list[Path]:
    """All three figures of a monitored run into ``folder`` (see FIGURE_NAMES); their paths."""
    folder = Path(folder)
    heatmap, updates, histograms = (folder / name for name in FIGURE_NAMES)
    return [
        save_gradient_heatmap(data, heatmap),
        save_update_ratios(data, updates),
        save_activation_histograms(data, histograms),
    ]
