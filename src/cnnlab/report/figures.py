"""Figure helpers shared by the studies: numbers in, a PNG file out.

Each function takes plain numbers (lists, NumPy arrays or tensors), writes
one PNG and returns its path. They use matplotlib's object API with the Agg
canvas, never ``pyplot``, so they do not touch the caller's backend or
global figure state and are safe in tests and worker processes. Labels are
shown literally: a ``$`` in a class name does not start matplotlib's math
mode. Figures are sized for the report column (about 900 pixels wide) and
kept small because the HTML report embeds them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from cnnlab._util import atomic_path

DPI = 100
TRAIN_STYLE = {"linestyle": "--", "alpha": 0.8}
VALIDATION_STYLE = {"linestyle": "-"}
LABEL_CHARACTERS = 24  # tick labels longer than this are cut (the report's tables show them whole)
LEGEND_CHARACTERS = 40


def save_curves(
    history: Sequence[Mapping[str, float]] | Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    train: str = "train",
) -> Path:
    """Accuracy and loss per epoch, training and validation, side by side.

    ``history`` is a trainer history (a list of per-epoch dicts with
    ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
    ``val_accuracy``) or a mapping from run label to such a list, drawn in one
    colour per run. Training curves are dashed, validation curves solid.
    ``train="fit"`` plots ``fit_loss``/``fit_accuracy`` (the un-augmented train
    subset) instead of the augmented batches. Missing keys are skipped.
    """
    runs = _as_runs(history)
    figure = Figure(figsize=(9, 3.6), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, 2)
    for panel, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for index, (label, rows) in enumerate(runs.items()):
            color = f"C{index % 10}"
            epochs = [row.get("epoch", position + 1) for position, row in enumerate(rows)]
            for split, style in ((train, TRAIN_STYLE), ("val", VALIDATION_STYLE)):
                values = [row.get(f"{split}_{metric}") for row in rows]
                points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
                if not points:
                    continue
                split_name = {"val": "validation", "fit": "train (un-augmented)"}.get(split, split)
                name = f"{label} {split_name}" if label else split_name
                panel.plot(*zip(*points, strict=True), color=color, marker="o", markersize=3,
                           label=_plain(_shorten(name, LEGEND_CHARACTERS)), **style)
        panel.set_xlabel("epoch")
        panel.set_ylabel(metric)
        panel.grid(alpha=0.3)
        if panel.lines:
            panel.legend(fontsize="small")
    if title:
        figure.suptitle(_plain(title))
    return _save(figure, path)


def save_bar(
    values: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    title: str = "",
    ylabel: str = "",
    errors: Mapping[str, float] | Mapping[str, Mapping[str, float]] | None = None,
    log: bool = False,
    annotate: bool = True,
) -> Path:
    """Bars from a mapping ``{label: value}``, or grouped bars ``{group: {series: value}}``.

    ``errors`` has the same shape and draws error bars (e.g. the standard
    deviation over seeds). ``annotate`` writes each value above its bar.
    """
    groups = {str(k): v for k, v in values.items()}
    nested = any(isinstance(v, Mapping) for v in groups.values())
    if not nested:
        groups = {k: {"": v} for k, v in groups.items()}
        errors = {str(k): {"": v} for k, v in errors.items()} if errors else None
    series = list(dict.fromkeys(s for group in groups.values() for s in group))
    width = 0.8 / len(series)
    positions = np.arange(len(groups))

    figure = Figure(figsize=(max(5.0, 0.9 * len(groups) * max(1, len(series) / 2) + 2), 3.6),
                    dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for index, name in enumerate(series):
        heights = [float(group.get(name, np.nan)) for group in groups.values()]
        spread = None
        if errors:
            spread = [float(errors.get(g, {}).get(name, 0.0)) for g in groups]
        offsets = positions - 0.4 + width * (index + 0.5)
        bars = axes.bar(offsets, heights, width * 0.92, yerr=spread, capsize=3,
                        color=f"C{index % 10}",
                        label=_plain(_shorten(name, LEGEND_CHARACTERS)) if name else None)
        if annotate:
            axes.bar_label(bars, labels=[_short_number(h) for h in heights], fontsize="small",
                           padding=2)
    crowded = len(groups) > 5
    axes.set_xticks(positions, [_plain(_shorten(g, LABEL_CHARACTERS)) for g in groups],
                    rotation=30 if crowded else 0, ha="right" if crowded else "center")
    if log:
        axes.set_yscale("log")
    axes.set_ylabel(_plain(ylabel))
    axes.grid(axis="y", alpha=0.3)
    if len(series) > 1 or series[0]:
        axes.legend(fontsize="small")
    if title:
        axes.set_title(_plain(title))
    return _save(figure, path)


def save_heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | os.PathLike,
    *,
    log: bool = True,
    title: str = "",
    colorbar_label: str = "",
    annotate: bool | None = None,
) -> Path:
    """A matrix as coloured cells, e.g. gradient norm per layer (rows) per step (columns).

    With ``log=True`` (the default: gradient norms span decades) colours
    follow log10 of the values; zeros and negatives, which have no logarithm,
    are drawn grey. ``annotate`` writes the values in the cells; by default
    only when the matrix has at most 12 x 12 cells.
    """
    data = _array(matrix).astype(float)
    if data.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {data.shape}")
    rows, cols = data.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"matrix is {rows}x{cols} but got {len(row_labels)} row labels "
                         f"and {len(col_labels)} column labels")
    masked = np.ma.masked_invalid(np.where(data > 0, data, np.nan) if log else data)
    norm: Normalize
    if log and masked.count():
        norm = LogNorm(vmin=float(masked.min()), vmax=float(masked.max()))
    else:
        norm = Normalize()

    figure = Figure(figsize=(min(12.0, 3 + 0.5 * cols), min(10.0, 1.5 + 0.35 * rows)),
                    dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.set_facecolor("#cccccc")
    image = axes.imshow(masked, aspect="auto", cmap="viridis", norm=norm,
                        interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label(_plain(colorbar_label))
    _tick_labels(axes, row_labels, col_labels)
    if annotate is None:
        annotate = rows <= 12 and cols <= 12
    if annotate:
        for (row, col), value in np.ndenumerate(data):
            shade = norm(value) if (value > 0 or not log) and np.isfinite(value) else 0.0
            # viridis is light at the top of its range: dark text there, white below.
            axes.text(col, row, _short_number(value), ha="center", va="center",
                      fontsize="x-small", color="black" if shade > 0.6 else "white")
    if title:
        axes.set_title(_plain(title))
    return _save(figure, path)


def save_confusion(
    matrix: Any,
    classes: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """A confusion matrix: rows are true classes, columns predicted classes.

    Cells are coloured by the share of the true class (each row sums to 1) so
    that rare classes are readable, and labelled with the counts.
    """
    counts = _array(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    if counts.shape[0] != len(classes):
        raise ValueError(f"confusion matrix is {counts.shape[0]}x{counts.shape[0]} "
                         f"but {len(classes)} classes were given")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float),
                       where=totals > 0)

    size = min(10.0, 2.5 + 0.55 * len(classes))
    figure = Figure(figsize=(size + 1, size), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes).set_label("share of true class")
    _tick_labels(axes, classes, classes)
    axes.set_ylabel("true class")
    axes.set_xlabel("predicted class")
    if len(classes) <= 20:
        for (row, col), count in np.ndenumerate(counts):
            axes.text(col, row, _short_number(count), ha="center", va="center",
                      fontsize="x-small", color="white" if shares[row, col] > 0.5 else "black")
    if title:
        axes.set_title(_plain(title))
    return _save(figure, path)


def save_image_grid(
    images: Any,
    path: str | os.PathLike,
    *,
    nrow: int = 8,
    titles: Sequence[str] | None = None,
    title: str = "",
    cell_inches: float = 1.1,
) -> Path:
    """Images in a grid of ``nrow`` per row, each with an optional title above it.

    ``images`` is uint8 ``[N, C, H, W]`` with C = 1 (grey) or 3 (RGB), as
    the data layer stores them; convert floats with ``(x * 255).round()``
    first. The images are tiled into one mosaic drawn without smoothing, so
    a 32x32 CIFAR image stays crisp.
    """
    array = _array(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C of 1 or 3, got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {array.dtype}; "
                         "convert with (x * 255).round().to(torch.uint8)")
    if titles is not None and len(titles) != len(array):
        raise ValueError(f"got {len(titles)} titles for {len(array)} images")
    N, C, H, W = array.shape
    if N == 0:
        raise ValueError("no images to draw")
    columns = max(1, min(nrow, N))
    rows = math.ceil(N / columns)
    gap = max(1, H // 16)
    title_rows = max(4, round(H * 0.28)) if titles is not None else 0  # pixels above each image
    cell_height, cell_width = title_rows + H + gap, W + gap

    # One mosaic [rows * cell_height, columns * cell_width, C], white around the images.
    mosaic = np.full((rows * cell_height - gap, columns * cell_width - gap, C), 255, np.uint8)
    for index, image in enumerate(array):
        row, col = divmod(index, columns)
        top, left = row * cell_height + title_rows, col * cell_width
        mosaic[top:top + H, left:left + W] = image.transpose(1, 2, 0)  # CHW -> HWC

    width_inches = columns * cell_inches
    height_inches = width_inches * mosaic.shape[0] / mosaic.shape[1] + (0.4 if title else 0.1)
    figure = Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.imshow(mosaic[..., 0] if C == 1 else mosaic, cmap="gray" if C == 1 else None,
                vmin=0, vmax=255, interpolation="nearest")
    axes.set_axis_off()
    if titles is not None:
        for index, text in enumerate(titles):
            row, col = divmod(index, columns)
            axes.text(col * cell_width + W / 2, row * cell_height + title_rows - 1,
                      _plain(_shorten(text, max(6, round(cell_inches * 12)))),
                      ha="center", va="bottom", fontsize="x-small")
    if title:
        figure.suptitle(_plain(title))
    return _save(figure, path)


def _as_runs(history: Any) -> dict[str, Sequence[Mapping[str, float]]]:
    if isinstance(history, Mapping):
        return {str(label): rows for label, rows in history.items()}
    return {"": history}


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _plain(text: str) -> str:
    """Text that matplotlib shows literally: ``$`` would otherwise start math mode."""
    return str(text).replace("$", r"\$")


def _short_number(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _shorten(text: str, limit: int) -> str:
    """Long labels squeeze the plot to nothing; keep the start and mark the cut."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tick_labels(axes: Any, row_labels: Sequence[str], col_labels: Sequence[str]) -> None:
    axes.set_yticks(range(len(row_labels)),
                    [_plain(_shorten(label, LABEL_CHARACTERS)) for label in row_labels],
                    fontsize="small")
    crowded = len(col_labels) > 6 or max((len(str(c)) for c in col_labels), default=0) > 5
    axes.set_xticks(range(len(col_labels)),
                    [_plain(_shorten(label, LABEL_CHARACTERS)) for label in col_labels],
                    fontsize="small", rotation=45 if crowded else 0,
                    ha="right" if crowded else "center", rotation_mode="anchor")


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    # Written through a temporary file so an interrupted study never leaves half a PNG.
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    # Atomic writes create 0600 files; a figure is meant to be shared like the report.
    path.chmod(path.stat().st_mode | 0o044)
    return path
