"""Binary segmentation data: image/mask pairs as uint8 tensors, and a synthetic shapes set.

Three folder layouts are read by :func:`load_segmentation`:

- **membrane** (``seg-membrane``): ``train/image/N.png`` with ``train/label/N.png``.
  The README says 255 = cell interior and 0 = membrane; cnnlab predicts the
  *membrane* as the positive class (the thin, minority structure that the
  U-Net paper segments), so this preset uses ``foreground=0``.
- **labels.csv** (``defects``): a CSV with ``image`` and ``mask`` columns of paths
  relative to the folder. The magnetic-tile masks are anti-aliased (all values
  0-255 occur), so this preset binarises with ``threshold=128`` as its README says.
- **images/ + masks/** (a user's folder): every file under ``images/`` has a
  mask under ``masks/`` at the same relative path with the same stem (any
  image extension).

Every pair is checked: a mask whose size differs from its image, a mask that is
not binary (with the values found), and an image without a mask each raise
:class:`~cnnlab._util.CnnlabError` naming the file.

:func:`synthetic_shapes` makes a seeded *synthetic* set of one shape per image
whose foreground fraction is controlled (about 1% to 40% of the pixels), for
studies that need object size as a variable.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab._util import CnnlabError
from cnnlab.data._resolve import find_dataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
Fit = Literal["resize", "crop", "none"]


@dataclass
class SegmentationSet:
    """Images and binary masks, aligned by index.

    ``images`` is uint8 ``[N, 1, H, W]`` (grayscale); ``masks`` is uint8
    ``[N, 1, H, W]`` holding 1 for foreground and 0 for background.
    ``foreground`` says in words what 1 means (``"membrane"``, ``"defect"``...).
    ``foreground_fraction`` of each image is recomputed on demand.
    """

    images: Tensor
    masks: Tensor
    names: list[str]
    source: str = ""
    foreground: str = "foreground"
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.shape != self.masks.shape:
            raise CnnlabError(
                f"images {tuple(self.images.shape)} and masks {tuple(self.masks.shape)} must have"
                " the same shape [N, 1, H, W]"
            )
        if len(self.names) != len(self.images):
            raise CnnlabError(f"{len(self.names)} names for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def foreground_fraction(self) -> Tensor:
        """Fraction of foreground pixels in each image, float ``[N]``."""
        return self.masks.flatten(1).float().mean(1)

    def subset(self, indices: Sequence[int] | Tensor) -> SegmentationSet:
        """The images at ``indices`` (a new set sharing no storage with this one)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return SegmentationSet(
            images=self.images[index].clone(),
            masks=self.masks[index].clone(),
            names=[self.names[i] for i in index.tolist()],
            source=self.source,
            foreground=self.foreground,
            extra={key: value[index].clone() for key, value in self.extra.items()},
        )

    def to_array_dataset(self, mean: tuple[float, ...] | None = None,
                         std: tuple[float, ...] | None = None):
        """The trainer's ``ArrayDataset``: uint8 images as inputs, uint8 {0,1} masks as targets."""
        from cnnlab.data import ArrayDataset  # written by the trainer's author

        return ArrayDataset(inputs=self.images, targets=self.masks,
                            classes=["background", self.foreground], source=self.source,
                            mean=mean, std=std)


# ----------------------------------------------------------------------------- reading files


def read_gray(path: Path) -> Tensor:
    """Decode an image file to uint8 ``[1, H, W]`` grayscale; a clear error if it fails.

    Pillow decodes (torchvision's decoders are deprecated since 0.29); colour
    images are converted with Pillow's ITU-R 601 luma, so a white/black RGB
    mask stays 255/0.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise CnnlabError(f"cannot decode image {path}: {error}") from error
    return torch.from_numpy(pixels.copy())[None]


def binarise_mask(mask: Tensor, path: Path | str, *, foreground: int | None = None,
                  threshold: int | None = None) -> Tensor:
    """Turn a uint8 mask into {0,1}, or raise if it is not binary.

    - ``threshold=None`` (strict): the mask must hold at most two values.
      ``foreground=None`` accepts {0,1} or {0,255} and takes the non-zero value as
      foreground; ``foreground=v`` takes pixels equal to ``v`` as foreground.
    - ``threshold=t``: grey (anti-aliased) masks are allowed; pixels ``>= t`` are
      foreground, or pixels ``< t`` when ``foreground`` is given and is below ``t``
      (a dark-foreground mask, such as the membrane labels).
    """
    if threshold is not None:
        if not 0 < threshold <= 255:
            raise CnnlabError(f"mask threshold must be in 1..255, got {threshold}")
        if foreground is not None and foreground < threshold:
            return (mask < threshold).to(torch.uint8)
        return (mask >= threshold).to(torch.uint8)

    values = torch.unique(mask)
    value_list = [int(v) for v in values.tolist()]
    if foreground is None:
        allowed = {0, 1} if max(value_list) <= 1 else {0, 255}
        if len(value_list) > 2 or not set(value_list) <= allowed:
            raise _not_binary(path, value_list, "0 and 255 (or 0 and 1)")
        return (mask > 0).to(torch.uint8)
    if len(value_list) > 2 or (len(value_list) == 2 and foreground not in value_list):
        raise _not_binary(path, value_list, f"{foreground} (foreground) and one background value")
    return (mask == foreground).to(torch.uint8)


def _not_binary(path: Path | str, values: list[int], expected: str) -> CnnlabError:
    shown = values if len(values) <= 12 else values[:6] + ["..."] + values[-6:]
    return CnnlabError(
        f"mask {path} is not binary: it holds {len(values)} distinct values {shown}; expected only"
        f" {expected}. If its edges are anti-aliased, binarise it with a threshold"
        " (threshold=128, or --mask-threshold 128)."
    )


def _fit_pair(image: Tensor, mask: Tensor, size: tuple[int, int] | None, fit: Fit
              ) -> tuple[Tensor, Tensor]:
    """Resize or crop one uint8 image ``[1,H,W]`` and its {0,1} mask to ``size``."""
    if size is None or fit == "none" or tuple(image.shape[-2:]) == size:
        return image, mask
    H, W = image.shape[-2:]
    if fit == "crop":
        # Scale the shorter side to the target first, so the crop never runs off the image.
        scale = max(size[0] / H, size[1] / W)
        scaled = (max(size[0], round(H * scale)), max(size[1], round(W * scale)))
        image, mask = _resize_pair(image, mask, scaled)
        top = (scaled[0] - size[0]) // 2
        left = (scaled[1] - size[1]) // 2
        crop = (..., slice(top, top + size[0]), slice(left, left + size[1]))
        return image[crop].contiguous(), mask[crop].contiguous()
    if fit == "resize":
        return _resize_pair(image, mask, size)
    raise CnnlabError(f"fit must be 'resize', 'crop' or 'none', got {fit!r}")


def _resize_pair(image: Tensor, mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    image_float = F.interpolate(image[None].float(), size=size, mode="bilinear",
                                antialias=True, align_corners=False)
    # The mask is averaged over each output pixel's footprint, then thresholded at one
    # half: nearest-neighbour subsampling would break thin structures (membranes) apart.
    mask_float = F.interpolate(mask[None].float(), size=size, mode="bilinear",
                               antialias=True, align_corners=False)
    image_out = image_float.round().clamp(0, 255).to(torch.uint8)[0]
    return image_out, (mask_float[0] >= 0.5).to(torch.uint8)


def read_pairs(pairs: Sequence[tuple[Path, Path]], *, size: int | tuple[int, int] | None = None,
               fit: Fit = "resize", foreground: int | None = None,
               threshold: int | None = None, source: str = "",
               foreground_name: str = "foreground", root: Path | None = None
               ) -> SegmentationSet:
    """Read (image path, mask path) pairs into a :class:`SegmentationSet`.

    ``size`` is ``(H, W)`` or one int for a square; ``None`` keeps the native size,
    which then must be the same for every image. ``fit="resize"`` stretches to the
    size; ``fit="crop"`` scales the shorter side to fit and takes the centre.
    See :func:`binarise_mask` for ``foreground`` and ``threshold``.
    """
    if not pairs:
        raise CnnlabError(f"no image/mask pairs found in {root or source or 'the input'}")
    target = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
    images, masks, names = [], [], []
    for image_path, mask_path in pairs:
        if not mask_path.exists():
            raise CnnlabError(
                f"image {image_path} has no mask: expected {mask_path}. Add the mask or remove"
                " the image from the folder."
            )
        image = read_gray(image_path)
        raw_mask = read_gray(mask_path)
        if image.shape[-2:] != raw_mask.shape[-2:]:
            raise CnnlabError(
                f"mask {mask_path} is {_size_text(raw_mask)} but its image {image_path} is"
                f" {_size_text(image)} (width x height); a mask must match its image pixel for"
                " pixel."
            )
        mask = binarise_mask(raw_mask, mask_path, foreground=foreground, threshold=threshold)
        image, mask = _fit_pair(image, mask, target, fit)
        images.append(image)
        masks.append(mask)
        names.append(str(image_path.relative_to(root)) if root else image_path.name)

    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise CnnlabError(
            f"images in {root or source} have different sizes {sorted(shapes)[:4]}...; pass a"
            " size (e.g. size=128) so they can be stacked"
        )
    return SegmentationSet(torch.stack(images), torch.stack(masks), names, source=source,
                           foreground=foreground_name)


def _size_text(image: Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]}"


# ----------------------------------------------------------------------------- layouts


def load_segmentation(name_or_path: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
                      fit: Fit = "resize", split: str = "train",
                      foreground: int | None | Literal["preset"] = "preset",
                      threshold: int | None | Literal["preset"] = "preset",
                      labels: Sequence[str] | None = None, limit: int | None = None,
                      data_root: str | os.PathLike | None = None) -> SegmentationSet:
    """Load a segmentation folder by dataset name or path.

    ``name_or_path``: ``"seg-membrane"``, ``"defects"`` (resolved by
    :func:`cnnlab.data.find_dataset`) or a folder of one of the layouts in the
    module docstring. ``foreground``/``threshold`` default to the layout's preset
    (membrane: ``foreground=0``, i.e. the membrane is class 1; labels.csv:
    ``threshold=128``; user folders: strict {0,255} or {0,1} masks, non-zero =
    foreground). ``split`` picks ``train`` in the membrane layout (its test
    slices have no labels). ``labels`` filters a labels.csv by its ``label``
    column (e.g. ``["defective"]``). ``limit`` keeps the first N pairs, for tests.

    Example::

        train = load_segmentation("seg-membrane", size=256)
        train.images.shape   # torch.Size([30, 1, 256, 256]); masks: 1 = membrane
    """
    root = find_dataset(name_or_path, explicit_root=data_root)
    groups: list[str] | None = None
    if (root / split / "image").is_dir() and (root / split / "label").is_dir():
        pairs = _membrane_pairs(root, split)
        preset_foreground, preset_threshold, meaning = 0, None, "membrane"
    elif (root / "labels.csv").is_file():
        pairs, groups = _csv_pairs(root, labels)
        preset_foreground, preset_threshold, meaning = None, 128, "defect"
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = _folder_pairs(root)
        preset_foreground, preset_threshold, meaning = None, None, "foreground"
    else:
        raise CnnlabError(
            f"{root} is not a segmentation folder: expected train/image + train/label,"
            " a labels.csv with image and mask columns, or images/ + masks/ with the same stems"
        )
    if limit is not None:
        pairs = pairs[:limit]
        groups = groups[:limit] if groups else groups
    chosen_foreground = preset_foreground if foreground == "preset" else foreground
    chosen_threshold = preset_threshold if threshold == "preset" else threshold
    log.info("reading %d image/mask pairs from %s", len(pairs), root)
    data = read_pairs(pairs, size=size, fit=fit, foreground=chosen_foreground,
                      threshold=chosen_threshold, source=str(root), foreground_name=meaning,
                      root=root)
    if groups:
        # Integer codes of labels.csv's tile_group, so split_segmentation keeps groups whole.
        codes = {name: code for code, name in enumerate(sorted(set(groups)))}
        data.extra["group"] = torch.tensor([codes[g] for g in groups])
    return data


def _membrane_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = sorted(_image_files(root / split / "image"), key=_natural_key)
    return [(path, root / split / "label" / path.name) for path in images]


def _csv_pairs(root: Path, labels: Sequence[str] | None
               ) -> tuple[list[tuple[Path, Path]], list[str] | None]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"image", "mask"} <= set(rows[0]):
        raise CnnlabError(f"{root / 'labels.csv'} needs 'image' and 'mask' columns,"
                          f" found {sorted(rows[0])}")
    if labels is not None:
        rows = [row for row in rows if row.get("label") in set(labels)]
    pairs = [(root / row["image"], root / row["mask"]) for row in rows]
    groups = [row["tile_group"] for row in rows] if rows and "tile_group" in rows[0] else None
    return pairs, groups


def _folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    image_dir, mask_dir = root / "images", root / "masks"
    masks_by_stem = {
        str(path.relative_to(mask_dir).with_suffix("")): path for path in _image_files(mask_dir)
    }
    pairs = []
    for image_path in sorted(_image_files(image_dir), key=_natural_key):
        stem = str(image_path.relative_to(image_dir).with_suffix(""))
        # A missing mask is reported by read_pairs with the path it expected.
        mask_path = masks_by_stem.get(stem, mask_dir / f"{stem}.png")
        pairs.append((image_path, mask_path))
    return pairs


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _natural_key(path: Path) -> tuple:
    # "10.png" after "9.png": compare digit runs as numbers.
    import re

    return tuple(int(part) if part.isdigit() else part
                 for part in re.split(r"(\d+)", str(path)))


def split_segmentation(data: SegmentationSet, validation: float | int, *, seed: int = 0,
                       contiguous: bool = False) -> tuple[SegmentationSet, SegmentationSet]:
    """Split into (train, validation); ``validation`` is a fraction or a count.

    ``contiguous=True`` takes the *last* images (for slices of one stack, where
    a random split would put near-copies on both sides). When the set has
    ``extra["group"]`` (labels.csv's tile_group), whole groups are drawn, so
    repeated photographs of one object never straddle the split. Otherwise the
    draw is random with ``seed``.
    """
    n = len(data)
    count = int(round(validation * n)) if isinstance(validation, float) else int(validation)
    if not 0 < count < n:
        raise CnnlabError(
            f"validation {validation!r} leaves no training or no validation images out of {n};"
            " use a fraction in (0, 1) or a count between 1 and n - 1"
        )
    generator = torch.Generator().manual_seed(seed)
    if contiguous:
        val_index = torch.arange(n - count, n)
    elif "group" in data.extra:
        groups = data.extra["group"]
        unique = torch.unique(groups)
        chosen: list[Tensor] = []
        taken = 0
        for group in unique[torch.randperm(len(unique), generator=generator)].tolist():
            if taken >= count:
                break
            members = torch.nonzero(groups == group).flatten()
            chosen.append(members)
            taken += len(members)
        val_index = torch.cat(chosen).sort().values
    else:
        val_index = torch.randperm(n, generator=generator)[:count].sort().values
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val_index] = True
    return data.subset(torch.nonzero(~is_val).flatten()), data.subset(val_index)


def tile_set(data: SegmentationSet, tile: int, stride: int | None = None) -> SegmentationSet:
    """Cut every image into ``tile`` x ``tile`` pieces (``stride`` defaults to ``tile``).

    Training on tiles of a few large images (30 membrane slices) gives many small
    samples, and a fully convolutional network can still be evaluated on whole images.
    """
    stride = stride or tile
    N, C, H, W = data.images.shape
    if tile > min(H, W):
        raise CnnlabError(f"tile {tile} is larger than the images ({W}x{H})")
    # unfold: [N, C, H, W] -> [N, C, rows, cols, tile, tile]
    def cut(x: Tensor) -> Tensor:
        pieces = x.unfold(2, tile, stride).unfold(3, tile, stride)
        rows, cols = pieces.shape[2:4]
        return pieces.permute(0, 2, 3, 1, 4, 5).reshape(N * rows * cols, C, tile, tile)

    images, masks = cut(data.images), cut(data.masks)
    per_image = len(images) // N
    names = [f"{name}#{k}" for name in data.names for k in range(per_image)]
    return SegmentationSet(images.contiguous(), masks.contiguous(), names, source=data.source,
                           foreground=data.foreground)


# ----------------------------------------------------------------------------- synthetic


def synthetic_shapes(count: int, *, size: int = 64,
                     fraction_range: tuple[float, float] = (0.01, 0.4),
                     contrast: float = 0.35, noise: float = 0.12, blur: float = 1.0,
                     seed: int = 0) -> SegmentationSet:
    """A *synthetic* set: one bright shape per image on a textured background.

    Each image's target foreground fraction is drawn log-uniformly from
    ``fraction_range`` (default 1% to 40% of the pixels), so small and large
    objects are equally represented on a log scale; the realised fraction is in
    ``extra["target_fraction"]`` and :attr:`SegmentationSet.foreground_fraction`.
    Shapes are ellipses (random axes ratio 1-2.5 and angle) or rectangles. The
    image is ``background texture + contrast * shape``, blurred by ``blur``
    pixels (soft edges make the boundary uncertain, as in real data) plus
    Gaussian ``noise`` (in units of the full 0-1 range). Same seed, same set.

    Example::

        data = synthetic_shapes(500, size=64, seed=0)
        data.foreground_fraction.min(), data.foreground_fraction.max()  # ~0.01, ~0.4
    """
    low, high = fraction_range
    if not 0 < low <= high < 1:
        raise CnnlabError(f"fraction_range must satisfy 0 < low <= high < 1, got {fraction_range}")
    if size < 16:
        raise CnnlabError(f"synthetic images need size >= 16 pixels, got {size}")
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, a: float = 0.0, b: float = 1.0) -> Tensor:
        return a + (b - a) * torch.rand(*shape, generator=generator)

    # Object parameters, one row per image: area -> axes from an aspect ratio.
    fractions = torch.exp(uniform(count, a=math.log(low), b=math.log(high)))
    area = fractions * size * size
    aspect = uniform(count, a=1.0, b=2.5)
    is_rectangle = torch.rand(count, generator=generator) < 0.3
    angle = uniform(count, a=0.0, b=math.pi)
    # Ellipse area = pi a b; rectangle area = 4 a b (a, b are half-axes).
    shape_constant = torch.where(is_rectangle, torch.tensor(4.0), torch.tensor(math.pi))
    semi_minor = torch.sqrt(area / (shape_constant * aspect))
    semi_major = semi_minor * aspect
    # Keep the whole object inside the image: centre at least its extent from the edge.
    extent = torch.minimum(semi_major * 1.05, torch.tensor(size / 2 - 1.0))
    centre_y = extent + uniform(count) * (size - 2 * extent)
    centre_x = extent + uniform(count) * (size - 2 * extent)

    # Rasterise all masks at once: pixel centres rotated into each object's frame.
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = coords.view(1, size, 1) - centre_y.view(-1, 1, 1)            # [N, H, 1]
    x = coords.view(1, 1, size) - centre_x.view(-1, 1, 1)            # [N, 1, W]
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    u = (x * cos + y * sin) / semi_major.view(-1, 1, 1)              # [N, H, W]
    v = (-x * sin + y * cos) / semi_minor.view(-1, 1, 1)
    ellipse = u**2 + v**2 <= 1.0
    rectangle = (u.abs() <= 1.0) & (v.abs() <= 1.0)
    masks = torch.where(is_rectangle.view(-1, 1, 1), rectangle, ellipse)[:, None]  # [N,1,H,W]

    # Background: smooth random texture (low-resolution noise, upsampled) + a gradient.
    coarse = torch.rand(count, 1, 6, 6, generator=generator)
    texture = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    base = 0.3 + 0.25 * texture
    image = base + contrast * masks.float()
    if blur > 0:
        image = _gaussian_blur(image, blur)
    image = image + noise * torch.randn(image.shape, generator=generator)
    images = (image.clamp(0, 1) * 255).round().to(torch.uint8)

    names = [f"synthetic-{seed}-{i:05d}" for i in range(count)]
    return SegmentationSet(images, masks.to(torch.uint8), names,
                           source=f"synthetic shapes (seed {seed})",
                           foreground="synthetic shape",
                           extra={"target_fraction": fractions})


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1))
