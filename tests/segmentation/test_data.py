"""Reading image/mask folders, the clear errors for bad pairs, and the synthetic set."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab._util import CnnlabError
from cnnlab.data.segmentation import (
    binarise_mask,
    load_segmentation,
    split_segmentation,
    synthetic_shapes,
    tile_set,
)


def write_gray(path: Path, pixels: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="L").save(path)


def user_folder(root: Path, count: int = 3, size=(24, 32)) -> Path:
    """images/ + masks/ with the same stems; each mask is a rectangle of 255."""
    for i in range(count):
        image = torch.randint(0, 256, size)
        mask = torch.zeros(size)
        mask[4:10, 5 + i:15 + i] = 255
        write_gray(root / "images" / f"slice_{i}.png", image)
        write_gray(root / "masks" / f"slice_{i}.png", mask)
    return root


def test_user_folder_reads_into_uint8_tensors(tmp_path):
    data = load_segmentation(user_folder(tmp_path))
    assert data.images.shape == (3, 1, 24, 32) and data.images.dtype == torch.uint8
    assert data.masks.dtype == torch.uint8 and set(data.masks.unique().tolist()) == {0, 1}
    assert data.masks[0].sum().item() == 6 * 10
    assert data.names == ["images/slice_0.png", "images/slice_1.png", "images/slice_2.png"]


def test_resize_and_crop_reach_the_chosen_size(tmp_path):
    root = user_folder(tmp_path)
    resized = load_segmentation(root, size=16)
    cropped = load_segmentation(root, size=(16, 16), fit="crop")
    assert resized.images.shape == cropped.images.shape == (3, 1, 16, 16)
    # Resizing 24x32 -> 16x16 keeps the rectangle's share of the image (60 / 768).
    assert resized.foreground_fraction[0].item() == pytest.approx(60 / 768, abs=0.02)


def test_mask_size_mismatch_names_file_and_both_sizes(tmp_path):
    root = user_folder(tmp_path)
    write_gray(root / "masks" / "slice_1.png", torch.zeros(20, 32))
    with pytest.raises(CnnlabError) as error:
        load_segmentation(root)
    message = str(error.value)
    assert "slice_1.png" in message and "32x20" in message and "32x24" in message


def test_non_binary_mask_lists_the_values_found(tmp_path):
    root = user_folder(tmp_path)
    mask = torch.zeros(24, 32)
    mask[2:6, 2:6] = 255
    mask[6, 2:6] = 128  # an anti-aliased edge
    mask[7, 2:6] = 37
    write_gray(root / "masks" / "slice_2.png", mask)
    with pytest.raises(CnnlabError) as error:
        load_segmentation(root)
    message = str(error.value)
    assert "slice_2.png" in message and "[0, 37, 128, 255]" in message
    assert "threshold" in message
    # With an explicit threshold the same mask is accepted: >= 128 is foreground.
    data = load_segmentation(root, threshold=128)
    assert data.masks[2].sum().item() == 4 * 4 + 4


def test_image_without_mask_names_the_image(tmp_path):
    root = user_folder(tmp_path)
    write_gray(root / "images" / "orphan.png", torch.zeros(24, 32))
    with pytest.raises(CnnlabError, match=r"orphan.png has no mask: expected .*masks/orphan.png"):
        load_segmentation(root)


def test_foreground_value_selects_the_positive_class():
    mask = torch.tensor([[0, 255], [255, 255]], dtype=torch.uint8)
    assert binarise_mask(mask, "m.png").tolist() == [[0, 1], [1, 1]]
    assert binarise_mask(mask, "m.png", foreground=0).tolist() == [[1, 0], [0, 0]]
    assert binarise_mask(mask // 255, "m.png").tolist() == [[0, 1], [1, 1]]
    with pytest.raises(CnnlabError, match="not binary"):
        binarise_mask(torch.tensor([[0, 7]], dtype=torch.uint8), "m.png", foreground=255)
    grey = torch.tensor([[10, 100, 200]], dtype=torch.uint8)
    assert binarise_mask(grey, "m.png", threshold=128).tolist() == [[0, 0, 1]]
    assert binarise_mask(grey, "m.png", threshold=128, foreground=0).tolist() == [[1, 1, 0]]


def test_not_a_segmentation_folder_is_a_clear_error(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(CnnlabError, match="not a segmentation folder"):
        load_segmentation(tmp_path)


def test_membrane_is_the_positive_class(membrane_root):
    data = load_segmentation(membrane_root, size=128, limit=4)
    assert data.images.shape == (4, 1, 128, 128)
    assert data.foreground == "membrane"
    # README: about 22% of training pixels are membrane (value 0 in the label files).
    assert 0.15 < data.foreground_fraction.mean().item() < 0.3


def test_defect_masks_are_binarised_at_128(defect_root):
    data = load_segmentation(defect_root, size=64, labels=["defective"], limit=12)
    assert data.foreground == "defect" and len(data) == 12
    assert set(data.masks.unique().tolist()) <= {0, 1}
    assert "group" in data.extra
    train, val = split_segmentation(data, 0.3, seed=0)
    assert not set(train.extra["group"].tolist()) & set(val.extra["group"].tolist())


def test_synthetic_shapes_cover_one_to_forty_percent_and_repeat_per_seed():
    data = synthetic_shapes(200, size=64, seed=3)
    fractions = data.foreground_fraction
    assert 0.008 < fractions.min().item() < 0.02 and 0.3 < fractions.max().item() < 0.42
    ratio = fractions / data.extra["target_fraction"]
    assert ratio.min().item() > 0.8 and ratio.max().item() < 1.2
    again = synthetic_shapes(200, size=64, seed=3)
    assert torch.equal(data.images, again.images) and torch.equal(data.masks, again.masks)
    assert not torch.equal(data.images, synthetic_shapes(200, size=64, seed=4).images)
    assert all(name.startswith("synthetic") for name in data.names)
    # Objects are brighter than their surroundings on average: the task is learnable.
    inside = data.images[data.masks.bool()].float().mean()
    outside = data.images[~data.masks.bool()].float().mean()
    assert inside > outside + 40


def test_contiguous_split_takes_the_last_images_and_tiles_cover_the_image():
    data = synthetic_shapes(10, size=32, seed=0)
    train, val = split_segmentation(data, 0.2, contiguous=True)
    assert val.names == data.names[-2:] and len(train) == 8
    tiles = tile_set(data, 16)
    assert len(tiles) == 40
    assert torch.equal(tiles.images[1, 0], data.images[0, 0, :16, 16:])
    assert tiles.masks.sum() == data.masks.sum()
