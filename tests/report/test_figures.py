"""Figure helpers: numbers in, one readable PNG out; bad input is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.report import figures

# Unescaped, this label would be parsed as mathtext and fail to draw.
MATH_TRAP = r"cost $\notacommand{x}$ & <b>"
HISTORY = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + e / 20,
            "val_accuracy": 0.45 + e / 20} for e in range(1, 4)]


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_curves_draw_one_run_or_several(tmp_path):
    single = figures.save_curves(HISTORY, tmp_path / "one.png", title=MATH_TRAP)
    several = figures.save_curves({"plain": HISTORY, MATH_TRAP: HISTORY}, tmp_path / "two.png")

    assert single == tmp_path / "one.png"
    assert png_size(single) == (900, 360)  # two panels side by side, report-column wide
    assert png_size(several) == (900, 360)


def test_curves_skip_missing_keys(tmp_path):
    no_validation = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]

    path = figures.save_curves(no_validation, tmp_path / "c.png", train="train")

    assert png_size(path)[0] == 900


def test_bar_plain_and_grouped_with_errors(tmp_path):
    plain = figures.save_bar({"a": 1.0, MATH_TRAP: 2.0}, tmp_path / "a.png", ylabel=MATH_TRAP)
    grouped = figures.save_bar({"lenet": {"none": 0.6, "flip": 0.65}, "resnet": {"none": 0.8}},
                               tmp_path / "b.png", errors={"lenet": {"none": 0.01}}, log=True)

    assert png_size(plain)[1] == 360 and png_size(grouped)[1] == 360


def test_heatmap_log_scale_tolerates_zeros_and_negatives(tmp_path):
    matrix = np.array([[0.0, 1e-8, 1e-3], [-1.0, 1.0, 1e3]])

    path = figures.save_heatmap(matrix, ["layer 1", MATH_TRAP], ["a", "b", "c"],
                                tmp_path / "h.png", colorbar_label="gradient norm")

    assert png_size(path)[0] > 0


def test_heatmap_rejects_label_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="2x3 but got 1 row labels"):
        figures.save_heatmap(np.ones((2, 3)), ["a"], ["a", "b", "c"], tmp_path / "h.png")


def test_confusion_takes_counts_and_tensors(tmp_path):
    counts = torch.tensor([[50, 2, 0], [3, 40, 7], [0, 0, 0]])  # an empty class row is allowed

    path = figures.save_confusion(counts, ["cat", "dog", MATH_TRAP], tmp_path / "c.png")

    assert png_size(path)[0] > 0


@pytest.mark.parametrize("matrix, classes, message", [
    (np.ones((2, 3)), ["a", "b"], "must be square"),
    (np.ones((2, 2)), ["a"], "2 classes|but 1 classes"),
])
def test_confusion_rejects_bad_shapes(tmp_path, matrix, classes, message):
    with pytest.raises(ValueError, match=message):
        figures.save_confusion(matrix, classes, tmp_path / "c.png")


def test_image_grid_tiles_rgb_and_grey(tmp_path):
    rgb = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    grey = np.full((3, 1, 28, 28), 200, np.uint8)

    with_titles = figures.save_image_grid(rgb, tmp_path / "rgb.png", nrow=5,
                                          titles=[f"class {i}" for i in range(9)] + [MATH_TRAP])
    plain = figures.save_image_grid(grey, tmp_path / "grey.png", nrow=8)

    assert png_size(with_titles)[0] == 550  # 5 columns of 1.1 inches at 100 dpi
    assert png_size(plain)[0] == 330  # only 3 columns are needed for 3 images


@pytest.mark.parametrize("images, titles, message", [
    (np.zeros((2, 3, 8, 8), np.float32), None, "must be uint8"),
    (np.zeros((2, 8, 8), np.uint8), None, r"\[N, C, H, W\]"),
    (np.zeros((2, 4, 8, 8), np.uint8), None, "C of 1 or 3"),
    (np.zeros((2, 3, 8, 8), np.uint8), ["one"], "1 titles for 2 images"),
    (np.zeros((0, 3, 8, 8), np.uint8), None, "no images"),
])
def test_image_grid_rejects_bad_input(tmp_path, images, titles, message):
    with pytest.raises(ValueError, match=message):
        figures.save_image_grid(images, tmp_path / "g.png", titles=titles)


def test_figures_leave_no_temporary_files(tmp_path):
    figures.save_bar({"a": 1.0}, tmp_path / "a.png")

    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
