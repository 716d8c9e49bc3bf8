"""Binary image data (good vs. defective): class folders, a named positive class, grouped splits.

A binary folder holds exactly two class folders, e.g. ``good/`` and
``defective/``; the positive class is chosen by name and may hold subfolders
(one per defect type), which are read recursively. The folder may also be
the root of a dataset whose images sit in ``images/`` beside a
``labels.csv``, as the shared magnetic-tile set does.

Several photographs of one physical part must never be split between
training and test, or the test measures recall of parts the model has seen.
When ``labels.csv`` has a group column (``tile_group`` by default), the
train/validation/test split keeps each group whole; without one, the split
is by image and the result says so.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab._util import CnnlabError
from cnnlab.data._resolve import find_dataset
from cnnlab.data.arrays import ArrayDataset
from cnnlab.data.images import list_image_folder, load_image_folder

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
GROUP_COLUMN = "tile_group"
IMAGE_COLUMN = "image"
SPLITS = ("train", "val", "test")
CONTRASTS = ("none", "per_image")


@dataclass
class BinaryData:
    """All images of a binary folder, targets 0/1 (1 = the positive class), with their groups.

    ``classes`` is ``[negative, positive]`` so that index 1 is the positive
    class. ``files`` are paths relative to ``root``; ``groups`` holds one
    group name per image, or ``None`` when no group column was found.
    ``kinds`` is the subfolder of each image inside its class folder (the
    defect type), or the class name for images directly in it.
    """

    dataset: ArrayDataset
    root: Path
    files: list[str]
    kinds: list[str]
    groups: list[str] | None
    group_source: str

    @property
    def positive_rate(self) -> float:
        return self.dataset.targets.sum().item() / len(self.dataset) if len(self.dataset) else 0.0


@dataclass
class BinarySplits:
    """Train, validation and test splits of a binary folder and how they were made."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    positive: str
    negative: str
    grouped: bool
    split_note: str
    positive_rate: float  # share of positives in the whole folder, all splits together
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready account of the split: sizes, positives, groups and how it was made."""
        return {"positive": self.positive, "negative": self.negative, "grouped": self.grouped,
                "split_note": self.split_note, "positive_rate": self.positive_rate,
                "counts": self.counts}


def find_binary_root(data: str | os.PathLike) -> tuple[Path, Path]:
    """The dataset root (where ``labels.csv`` may be) and the folder holding the class folders.

    A root with an ``images/`` folder (the shared defect layout) reads its
    classes from there; otherwise the root itself holds the class folders.
    """
    root = find_dataset(data)
    if not root.is_dir():
        raise CnnlabError(f"{root} is not a folder; pass a folder with one folder per class, "
                          "e.g. good/ and defective/")
    image_root = root / "images" if (root / "images").is_dir() else root
    return root, image_root


def class_folders(image_root: Path) -> list[str]:
    """Names of the class folders (sorted, hidden folders ignored)."""
    return sorted(p.name for p in image_root.iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def check_classes(image_root: Path, positive: str) -> tuple[list[str], str]:
    """Check that there are exactly two class folders, one named ``positive``.

    Returns ``(folders, negative)``. Raises a :class:`CnnlabError` naming the
    folders found when a class folder is missing, when there are more than
    two, or when ``positive`` is not among them.
    """
    folders = class_folders(image_root)
    found = ", ".join(f"{name}/" for name in folders) or "none"
    if len(folders) < 2:
        raise CnnlabError(
            f"{image_root} has {len(folders)} class folder(s) ({found}); a binary task needs "
            f"two: one for the positive class {positive!r} and one for the other class "
            "(e.g. good/ and defective/). Add the missing class folder."
        )
    if positive not in folders:
        close = [name for name in folders if name.lower() == positive.lower()]
        hint = f" (did you mean {close[0]!r}? names are case-sensitive)" if close else ""
        raise CnnlabError(
            f"--positive {positive!r} is not a class folder of {image_root}{hint}; the class "
            f"folders are: {found}. Pass one of them as the positive class."
        )
    if len(folders) > 2:
        raise CnnlabError(
            f"{image_root} has {len(folders)} class folders ({found}); a binary task needs "
            f"exactly two. Put the kinds of {positive!r} into subfolders of {positive}/ "
            f"(e.g. {positive}/crack/) and everything else into one other folder."
        )
    negative = next(name for name in folders if name != positive)
    return folders, negative


def load_binary_folder(
    data: str | os.PathLike,
    positive: str = "defective",
    *,
    size: int | tuple[int, int] = 64,
    channels: int | None = None,
    group_column: str = GROUP_COLUMN,
    contrast: str = "none",
    skip_bad: bool = False,
    progress: bool = False,
) -> BinaryData:
    """Read every image of a two-class folder as uint8 ``[N, C, size, size]`` with 0/1 targets.

    Images of any size and aspect ratio are resized (stretched) to ``size``
    (an int for a square, or ``(height, width)``); stretching keeps a defect
    at the very edge of the crop, which cropping to a square could cut away.
    ``channels`` of ``None`` keeps grayscale images as one channel and
    colour images as three (decided by the first image); 1 or 3 forces it.
    Decoded images are cached on disk (see :mod:`cnnlab.data.images`).
    ``contrast="per_image"`` standardises each image on its own (see
    :func:`per_image_contrast`), for photographs taken under several exposures.

    Example::

        data = load_binary_folder("defects", positive="defective", size=64)
        data.dataset.targets.mean()   # share of defective images
    """
    root, image_root = find_binary_root(data)
    _, negative = check_classes(image_root, positive)
    classes, files = list_image_folder(image_root)
    if contrast not in CONTRASTS:
        raise CnnlabError(f"contrast {contrast!r} is unknown; use one of {', '.join(CONTRASTS)}")
    if channels is None:
        channels = _channels_of(files[0][0])
    images = load_image_folder(image_root, size=size, channels=channels, skip_bad=skip_bad,
                               progress=progress)

    # The cached decode keeps the listing order minus skipped files; rebuild the file list alike.
    skipped = {entry["file"] for entry in images.meta.get("skipped", [])}
    kept = [(path, label) for path, label in files if str(path) not in skipped]
    positive_index = classes.index(positive)
    targets = (images.targets == positive_index).to(torch.float32)
    relative = [path.relative_to(root).as_posix() for path, _ in kept]
    kinds = [_kind(path, image_root) for path, _ in kept]
    groups, group_source = _read_groups(root, relative, group_column)

    inputs = per_image_contrast(images.inputs) if contrast == "per_image" else images.inputs
    dataset = ArrayDataset(inputs, targets, [negative, positive], source=str(root),
                           meta={"skipped": images.meta.get("skipped", [])})
    return BinaryData(dataset, root, relative, kinds, groups, group_source)


def split_binary(
    data: BinaryData,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> BinarySplits:
    """Split into train, validation and test, keeping each group whole when groups are known.

    With groups, scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded)
    takes one fold of about ``test_fraction`` as test, then one fold of the
    rest as validation: each group lands in one split, and each split gets
    about the folder's share of positives. Fractions are approximate because
    whole groups move (and a fold is 1/k of the data). Without groups the
    split is by image, stratified by class, and ``split_note`` says so.
    Normalisation statistics are measured on the training split only.

    Raises :class:`CnnlabError` when a split ends up without positives or
    without negatives: no threshold can be chosen or checked on it.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise CnnlabError(f"{name} must be between 0 and 1, got {value}")
    if val_fraction + test_fraction >= 1:
        raise CnnlabError(f"val_fraction + test_fraction = {val_fraction + test_fraction} "
                          "leaves nothing to train on; keep their sum below 1")
    dataset = data.dataset
    labels = dataset.targets.numpy().astype(np.int64)
    all_indices = np.arange(len(dataset))

    if data.groups is not None:
        groups = np.asarray(data.groups)
        rest, test = _group_fold(all_indices, labels, groups, test_fraction, seed)
        share = val_fraction / (1 - test_fraction)
        train, val = _group_fold(rest, labels[rest], groups[rest], share, seed + 1)
        train, val = rest[train], rest[val]
        note = (f"grouped by {data.group_source}: {len(set(groups))} groups, each kept in one "
                "split (StratifiedGroupKFold)")
    else:
        train, val, test = _image_split(labels, val_fraction, test_fraction, seed)
        note = (f"by image (stratified): {data.group_source}, so photographs of one part "
                "may fall into different splits and test scores can be optimistic")
        log.warning("splitting %s by image: %s", data.root, data.group_source)

    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    counts = _check_splits(parts, labels, data)
    chosen = {name: dataset.take(torch.from_numpy(index)) for name, index in parts.items()}
    for name, index in parts.items():
        chosen[name].meta = {"files": [data.files[i] for i in index],
                             "kinds": [data.kinds[i] for i in index],
                             "groups": None if data.groups is None else
                             [data.groups[i] for i in index]}
    train_ds = chosen["train"].with_statistics()
    for name in ("val", "test"):
        chosen[name].mean, chosen[name].std = train_ds.mean, train_ds.std
    negative, positive = dataset.classes
    return BinarySplits(train_ds, chosen["val"], chosen["test"], positive, negative,
                        data.groups is not None, note, data.positive_rate, counts)


def load_binary(
    data: str | os.PathLike,
    positive: str = "defective",
    *,
    size: int | tuple[int, int] = 64,
    channels: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    group_column: str = GROUP_COLUMN,
    contrast: str = "none",
    skip_bad: bool = False,
    progress: bool = False,
) -> BinarySplits:
    """:func:`load_binary_folder` then :func:`split_binary`: the three splits of a binary folder.

    Example::

        splits = load_binary("defects", positive="defective", size=64, seed=0)
        splits.split_note   # 'grouped by labels.csv column tile_group: 271 groups, ...'
    """
    folder = load_binary_folder(data, positive, size=size, channels=channels,
                                group_column=group_column, contrast=contrast,
                                skip_bad=skip_bad, progress=progress)
    return split_binary(folder, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def per_image_contrast(images: torch.Tensor, spread: float = 48.0, chunk: int = 1024
                       ) -> torch.Tensor:
    """Standardise each uint8 image on its own and map it back to uint8.

    Each image becomes ``128 + spread * (x - mean) / std`` (mean and std over
    its own pixels and channels), clipped to [0, 255]: about +-2.7 standard
    deviations survive. Photographs of one part under several exposures
    then look alike, and what is left is local contrast, where surface
    defects are. Example: ``per_image_contrast(dataset.inputs)``.
    """
    result = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].float()  # [n, C, H, W]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)  # flat images stay flat
        scaled = 128.0 + spread * (x - mean) / std
        result[start:start + chunk] = scaled.round_().clamp_(0, 255).to(torch.uint8)
    return result


def _channels_of(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
    except (OSError, ValueError) as error:
        raise CnnlabError(f"{path} could not be opened as an image ({error})") from None
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3


def _kind(path: Path, image_root: Path) -> str:
    parts = path.relative_to(image_root).parts
    return parts[1] if len(parts) > 2 else parts[0]


def _read_groups(root: Path, files: list[str], column: str) -> tuple[list[str] | None, str]:
    """One group per image from ``labels.csv`` (paths relative to its folder), or ``None``."""
    labels = root / LABELS_FILE
    if not labels.exists():
        return None, f"no {LABELS_FILE} in {root}"
    with open(labels, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if column not in fields or IMAGE_COLUMN not in fields:
            return None, (f"{labels} has no {column!r} and {IMAGE_COLUMN!r} columns "
                          f"(columns: {', '.join(fields)})")
        by_file = {row[IMAGE_COLUMN]: row[column] for row in reader}
    groups, unlisted = [], 0
    for name in files:
        group = by_file.get(name)
        if not group:
            # An image missing from labels.csv is its own group: it cannot leak into a group.
            unlisted += 1
            group = f"file:{name}"
        groups.append(group)
    if unlisted:
        log.warning("%d of %d images are not listed in %s; each is treated as its own group",
                    unlisted, len(files), labels)
    return groups, f"{LABELS_FILE} column {column}"


def _group_fold(indices: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``indices``) of the kept part and of one held-out fold of ~``fraction``."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, round(1 / fraction))
    distinct = len(set(groups.tolist()))
    if distinct < folds:
        raise CnnlabError(
            f"only {distinct} groups to split into {folds} folds (a held-out share of "
            f"{fraction:.2f}); each split needs whole groups. Add images of more parts or "
            "lower the validation/test fractions."
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    kept, held_out = next(splitter.split(indices, labels, groups))
    return kept, held_out


def _image_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    try:
        rest, test = train_test_split(indices, test_size=test_fraction, random_state=seed,
                                      stratify=labels)
        share = val_fraction / (1 - test_fraction)
        train, val = train_test_split(rest, test_size=share, random_state=seed + 1,
                                      stratify=labels[rest])
    except ValueError as error:
        raise CnnlabError(f"cannot split {len(labels)} images into train, validation and test "
                          f"with both classes in each ({error}); add images") from None
    return train, val, test


def _check_splits(parts: dict[str, np.ndarray], labels: np.ndarray, data: BinaryData
                  ) -> dict[str, dict[str, int]]:
    negative, positive = data.dataset.classes
    counts = {}
    for name, index in parts.items():
        positives = int(labels[index].sum())
        counts[name] = {"images": len(index), "positives": positives,
                        "negatives": len(index) - positives}
        kinds = sorted(data.kinds[i] for i in index if labels[i] == 1)
        counts[name]["positive_kinds"] = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
        if data.groups is not None:
            counts[name]["groups"] = len({data.groups[i] for i in index})
            counts[name]["positive_groups"] = len({data.groups[i] for i in index
                                                   if labels[i] == 1})
    for name, count in counts.items():
        for kind, class_name in (("positives", positive), ("negatives", negative)):
            if count[kind] == 0:
                raise CnnlabError(
                    f"the {name} split has no {class_name!r} images ({count['images']} images: "
                    f"{count['positives']} {positive}, {count['negatives']} {negative}); "
                    "precision, recall and thresholds need both classes in every split. Add "
                    f"images of {class_name!r} (of more parts, if grouped), or change the seed "
                    "or the validation/test fractions."
                )
    return counts
