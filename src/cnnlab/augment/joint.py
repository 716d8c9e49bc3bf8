"""Geometric augmentation applied identically to images and their masks, on whole batches.

A segmentation mask must move with its image: the same flip, the same
rotation, the same crop, drawn independently for every sample of the batch.
kornia's ``AugmentationSequential`` with ``data_keys=["input", "mask"]`` does
exactly that on the device and resamples the mask with nearest-neighbour
interpolation (so it stays binary) while the image is resampled bilinearly.
:class:`JointAugment` wraps it in the trainer's augment contract,
``(inputs, targets) -> (inputs, targets)``.

Presets by name (:func:`joint_augment`):

- ``none``: identity;
- ``flips``: horizontal and vertical flips, each with p = 0.5;
- ``dihedral``: flips and a random multiple of 90 degrees (the 8 symmetries
  of a square; exact, object sizes unchanged);
- ``standard``: dihedral, then a rotation of up to +-15 degrees, then a crop
  of 60-100% of the area resized back to the input size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnlab._util import CnnlabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointAugmentConfig:
    """What :class:`JointAugment` does; probabilities are per sample."""

    hflip: float = 0.5          # probability of a left-right flip
    vflip: float = 0.5          # probability of an up-down flip
    rot90: bool = False         # rotate by 0, 90, 180 or 270 degrees, uniformly
    degrees: float = 0.0        # small-angle rotation, uniform in [-degrees, +degrees]
    crop_scale: tuple[float, float] | None = None  # crop area fraction, resized back


PRESETS: dict[str, JointAugmentConfig] = {
    "none": JointAugmentConfig(hflip=0.0, vflip=0.0),
    "flips": JointAugmentConfig(),
    "dihedral": JointAugmentConfig(rot90=True),
    "standard": JointAugmentConfig(rot90=True, degrees=15.0, crop_scale=(0.6, 1.0)),
}


class JointAugment:
    """Random flips, rotations and crops shared by each image and its mask.

    Call it as the trainer does: ``inputs`` float ``[B, C, H, W]`` in [0, 1],
    ``targets`` a mask ``[B, 1, H, W]`` or ``[B, H, W]`` of any dtype (uint8 {0,1}
    or float). Both come back with their input shapes and dtypes; the mask holds
    only its original values (nearest-neighbour resampling). Pixels rotated or
    cropped in from outside the image are 0 in both image and mask, i.e.
    background. Randomness comes from torch's global generator, so
    :func:`cnnlab._util.seed_everything` makes it repeatable.

    Example::

        augment = JointAugment(JointAugmentConfig(rot90=True, degrees=10))
        images, masks = augment(images, masks)
    """

    def __init__(self, config: JointAugmentConfig | None = None) -> None:
        self.config = config or JointAugmentConfig()
        low_high = self.config.crop_scale
        if low_high is not None and not 0 < low_high[0] <= low_high[1] <= 1:
            raise CnnlabError(f"crop_scale must satisfy 0 < low <= high <= 1, got {low_high}")
        if self.config.degrees < 0:
            raise CnnlabError(f"degrees must be >= 0, got {self.config.degrees}")
        self._pipelines: dict[tuple[int, int], torch.nn.Module] = {}

    def __repr__(self) -> str:
        return f"JointAugment({self.config})"

    def _pipeline(self, height: int, width: int) -> torch.nn.Module | None:
        # One kornia pipeline per image size: RandomResizedCrop needs its output size.
        key = (height, width)
        if key not in self._pipelines:
            self._pipelines[key] = _build_pipeline(self.config, height, width)
        return self._pipelines[key]

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if inputs.ndim != 4:
            raise CnnlabError(
                f"joint augmentation needs images [B, C, H, W], got {tuple(inputs.shape)}")
        B, C, H, W = inputs.shape
        if self.config.rot90 and H != W:
            raise CnnlabError(
                f"90-degree rotations need square images, got {H}x{W}; use rot90=False or crop "
                "the images to a square"
            )
        squeeze = targets.ndim == 3
        masks = targets[:, None] if squeeze else targets
        if masks.shape[0] != B or masks.shape[-2:] != (H, W):
            raise CnnlabError(
                f"mask batch {tuple(targets.shape)} does not match image batch"
                f" {tuple(inputs.shape)}"
            )
        pipeline = self._pipeline(H, W)
        if pipeline is None:
            return inputs, targets

        out_inputs, out_masks = pipeline(inputs, masks.float())
        out_masks = out_masks.round().to(targets.dtype)
        return out_inputs, (out_masks[:, 0] if squeeze else out_masks)


def _build_pipeline(config: JointAugmentConfig, height: int, width: int):
    import kornia.augmentation as K

    ops = []
    if config.hflip > 0:
        ops.append(K.RandomHorizontalFlip(p=config.hflip))
    if config.vflip > 0:
        ops.append(K.RandomVerticalFlip(p=config.vflip))
    if config.rot90:
        # times in [0, 3]: 0, 90, 180 or 270 degrees; applied to every sample.
        ops.append(K.RandomRotation90(times=(0, 3), p=1.0))
    if config.degrees > 0:
        ops.append(K.RandomRotation(degrees=config.degrees, p=1.0))
    if config.crop_scale is not None:
        ops.append(K.RandomResizedCrop((height, width), scale=config.crop_scale, p=1.0))
    if not ops:
        return None
    # kornia resamples "mask" keys with nearest neighbour by default: the mask stays binary.
    return K.AugmentationSequential(*ops, data_keys=["input", "mask"])


def joint_augment(name: str = "standard", **overrides) -> JointAugment:
    """A :class:`JointAugment` from a preset name, with fields overridden by keyword.

    ``joint_augment("dihedral")``; ``joint_augment("standard", degrees=5)``.
    Names: none, flips, dihedral, standard (see the module docstring).
    """
    if name not in PRESETS:
        raise CnnlabError(f"unknown joint augmentation {name!r}; use one of {sorted(PRESETS)}")
    base = PRESETS[name]
    try:
        config = JointAugmentConfig(**{**base.__dict__, **overrides})
    except TypeError as error:
        raise CnnlabError(f"joint_augment({name!r}): {error}") from error
    return JointAugment(config)
