"""Reading and splitting good/defective folders: classes, groups and the three clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.data.binary import load_binary, load_binary_folder, split_binary


def test_positive_class_by_name_gives_float_targets_and_resized_grayscale(binary_folder):
    data = load_binary_folder(binary_folder, positive="defective", size=16)
    dataset = data.dataset
    assert dataset.classes == ["good", "defective"]
    assert dataset.inputs.shape == (54, 1, 16, 16) and dataset.inputs.dtype == torch.uint8
    assert dataset.targets.dtype == torch.float32
    assert dataset.targets.sum().item() == 18  # 6 defective parts x 3 photographs
    assert set(data.kinds) == {"good", "spot", "crack"}
    assert data.groups is not None and len(set(data.groups)) == 18

    flipped = load_binary_folder(binary_folder, positive="good", size=(12, 8))
    assert flipped.dataset.classes == ["defective", "good"]
    assert flipped.dataset.inputs.shape[-2:] == (12, 8)
    assert flipped.dataset.targets.sum().item() == 36


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_keeps_every_group_in_one_split(binary_folder, seed):
    splits = load_binary(binary_folder, "defective", size=8, seed=seed)
    assert splits.grouped and "grouped by labels.csv column tile_group" in splits.split_note
    seen = {}
    for name in ("train", "val", "test"):
        for group in getattr(splits, name).meta["groups"]:
            assert seen.setdefault(group, name) == name, f"group {group} in two splits"
    assert sum(c["images"] for c in splits.counts.values()) == 54
    assert all(c["positives"] > 0 for c in splits.counts.values())
    assert splits.val.mean == splits.train.mean


def test_split_is_the_same_for_the_same_seed(binary_folder):
    first = load_binary(binary_folder, "defective", size=8, seed=3)
    second = load_binary(binary_folder, "defective", size=8, seed=3)
    assert first.test.meta["files"] == second.test.meta["files"]


def test_without_groups_the_split_is_by_image_and_says_so(tmp_path, make_folder):
    root = make_folder(tmp_path / "plain", with_labels=False)
    splits = load_binary(root / "images", "defective", size=8)
    assert not splits.grouped
    assert "by image" in splits.split_note and "no labels.csv" in splits.split_note


def test_missing_class_folder_is_a_clear_error(binary_folder):
    shutil.rmtree(binary_folder / "images" / "good")
    with pytest.raises(CnnlabError, match=r"1 class folder\(s\) \(defective/\).*needs two"):
        load_binary_folder(binary_folder, "defective", size=8)


def test_unknown_positive_class_lists_the_folders(binary_folder):
    with pytest.raises(CnnlabError, match=r"--positive 'defect' is not a class folder.*"
                                          r"defective/, good/"):
        load_binary_folder(binary_folder, "defect", size=8)
    with pytest.raises(CnnlabError, match="did you mean 'defective'"):
        load_binary_folder(binary_folder, "Defective", size=8)


def test_a_split_without_positives_is_a_clear_error(tmp_path, make_folder):
    # Two defective parts cannot fill train, validation and test with whole groups.
    root = make_folder(tmp_path / "few", good_parts=12, defective_parts=2)
    with pytest.raises(CnnlabError, match=r"the (train|val|test) split has no 'defective' "
                                          r"images"):
        load_binary(root, "defective", size=8)


def test_three_class_folders_ask_for_subfolders(binary_folder):
    shutil.copytree(binary_folder / "images" / "good", binary_folder / "images" / "unsure")
    with pytest.raises(CnnlabError, match="needs exactly two"):
        load_binary_folder(binary_folder, "defective", size=8)


def test_bad_fractions_are_refused(binary_folder):
    data = load_binary_folder(binary_folder, "defective", size=8)
    with pytest.raises(CnnlabError, match="leaves nothing to train on"):
        split_binary(data, val_fraction=0.5, test_fraction=0.5)


def test_shared_defect_set_splits_by_tile(defect_data):
    splits = load_binary(defect_data, "defective", size=16)
    assert splits.grouped
    assert splits.positive_rate == pytest.approx(392 / 1344)
    groups = {name: set(getattr(splits, name).meta["groups"]) for name in ("train", "val",
                                                                           "test")}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    assert not groups["train"] & groups["val"]
    assert sum(len(g) for g in groups.values()) == 271


def test_per_image_contrast_makes_exposures_alike():
    from cnnlab.data.binary import per_image_contrast

    generator = torch.Generator().manual_seed(0)
    pattern = torch.rand(1, 1, 12, 10, generator=generator)
    dark = (40 + 30 * pattern).round().to(torch.uint8)
    bright = (150 + 60 * pattern).round().to(torch.uint8)  # same part, brighter exposure
    flat = torch.full((1, 1, 12, 10), 77, dtype=torch.uint8)
    result = per_image_contrast(torch.cat([dark, bright, flat]))
    assert result.dtype == torch.uint8
    assert (result[0].float() - result[1].float()).abs().max() <= 3  # rounding of the inputs
    assert result[0].float().mean() == pytest.approx(128, abs=2)
    assert torch.all(result[2] == 128)


def test_unknown_contrast_is_refused(binary_folder):
    with pytest.raises(CnnlabError, match="contrast 'histogram' is unknown"):
        load_binary_folder(binary_folder, "defective", size=8, contrast="histogram")
