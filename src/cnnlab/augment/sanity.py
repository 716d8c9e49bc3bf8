"""Is the "augmented" data really different from the original? Two cheap checks.

- :func:`check_augmented_set` compares a pre-computed augmented set with the
  original images and counts exact copies. It catches the common Keras
  mistake ``np.concatenate([x, datagen.flow(x, y).x])``: the iterator's ``.x``
  attribute is the input array itself, not augmented images, so the
  "augmented" training set is the original one twice.
- :func:`check_preset` runs an augmenter on a sample batch and counts the
  images it changed. It catches a preset whose ranges are all zero, a
  pipeline that returns its input, or transforms too small to move a pixel
  by half a grey level.

Both return an :class:`AugmentCheck` (numbers and a verdict) and, when
something is wrong, also ``warnings.warn`` an :class:`AugmentationWarning`
so a script that ignores the return value still hears about it.

Example::

    report = check_augmented_set(x_train, x_augmented)
    if not report.ok:
        print(report.message)
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cnnlab._util import CnnlabError

log = logging.getLogger(__name__)

OK, COPIES, UNCHANGED = "ok", "copies", "unchanged"
HALF_GREY_LEVEL = 0.5 / 255  # in [0, 1] units: a change smaller than this rounds away in uint8


class AugmentationWarning(UserWarning):
    """The augmentation leaves the training images as they were."""


@dataclass
class AugmentCheck:
    """What a check measured; ``verdict`` is ``ok``, ``copies`` or ``unchanged``.

    ``unchanged`` counts the augmented images that are exact copies of an
    original (set check) or that the augmenter left as they were (preset
    check). ``mean_abs_change`` is the mean absolute pixel difference between
    each image and its augmented version, in grey levels (0-255), when the two
    can be paired (same count and shape); otherwise None.
    """

    check: str  # "set" or "preset"
    verdict: str
    message: str
    images: int
    unchanged: int
    unchanged_fraction: float
    mean_abs_change: float | None = None
    name: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.verdict}: {self.message}"


def check_augmented_set(original: Any, augmented: Any, *, max_copy_fraction: float = 0.5,
                        warn: bool = True) -> AugmentCheck:
    """Count the images of ``augmented`` that are exact copies of an image of ``original``.

    Both are arrays or tensors with samples on the first axis, of the same
    dtype (uint8 ``[N, C, H, W]`` as cnnlab stores images, or Keras' float
    ``[N, H, W, C]``). Order does not matter: each image is hashed. Pass only
    the augmented part, not the concatenated training set (which is half
    originals by construction).

    The verdict is ``copies`` (with an :class:`AugmentationWarning`, unless
    ``warn=False``) when more than ``max_copy_fraction`` of the augmented
    images are copies, i.e. the "augmented" set is mostly the original one
    again.

    >>> check_augmented_set(x, x).verdict        # the Keras `.x` mistake
    'copies'
    """
    original_array, augmented_array = _numpy(original, "original"), _numpy(augmented, "augmented")
    if original_array.dtype != augmented_array.dtype:
        raise CnnlabError(
            f"check_augmented_set: original is {original_array.dtype} but augmented is "
            f"{augmented_array.dtype}; exact copies can only be found between arrays of one "
            "dtype, so convert both the same way first (e.g. both to uint8)")
    count = len(augmented_array)
    if count == 0:
        raise CnnlabError("check_augmented_set: the augmented set is empty")

    known = {_digest(image) for image in original_array}
    copies = sum(_digest(image) in known for image in augmented_array)
    fraction = copies / count
    change = None
    if original_array.shape == augmented_array.shape:
        difference = np.abs(original_array.astype(np.float64) - augmented_array.astype(np.float64))
        change = float(difference.mean()) * _grey_levels_per_unit(original_array)

    message = (f"{copies} of {count} augmented images ({fraction:.0%}) are exact copies of "
               "original images")
    if change is not None:
        message += f" (mean absolute change {change:.2f} grey levels per pixel)"
    verdict = OK
    if fraction > max_copy_fraction:
        verdict = COPIES
        message += (
            ": the augmentation was not applied, and training on this set is training on the "
            "originals more often, not on new views. In Keras, `datagen.flow(x, y).x` is the "
            "input array x itself; draw augmented images with `next(flow)` or `flow[i]`.")
    report = AugmentCheck("set", verdict, message, count, copies, fraction, change)
    _announce(report, warn)
    return report


def check_preset(augment: Callable | None, sample: Any, *, min_changed_fraction: float = 0.1,
                 name: str | None = None, warn: bool = True) -> AugmentCheck:
    """Run ``augment`` on ``sample`` and count the images it left unchanged.

    ``augment`` is a cnnlab augmenter, ``(images, targets) -> (images,
    targets)`` on float images in [0, 1]; ``sample`` is a batch of uint8
    ``[N, C, H, W]`` images (converted to [0, 1]) or floats already in [0, 1].
    An image counts as changed when some pixel moves by more than half a grey
    level. The augmenter's random state is restored afterwards (through its
    ``state_dict`` or a copy), so checking a run's augmenter does not change
    the batches that run will see.

    The verdict is ``unchanged`` (with an :class:`AugmentationWarning`) when
    fewer than ``min_changed_fraction`` of the images changed, or when
    ``augment`` is None.

    >>> check_preset(AffineAugment(AffineSpec()), images).verdict    # all ranges zero
    'unchanged'
    """
    images = _float_images(sample)
    count = len(images)
    if count == 0:
        raise CnnlabError("check_preset: the sample batch is empty")
    label = f"augmentation {name!r}" if name else "the augmentation"
    if augment is None:
        report = AugmentCheck("preset", UNCHANGED, f"{label} is None: no image is changed",
                              count, count, 1.0, 0.0, name)
        _announce(report, warn)
        return report

    with torch.no_grad():
        output, _ = _run_without_advancing(augment, images.clone())
    if output.shape != images.shape:
        # A crop or resize changes every image, whatever its pixels.
        changed = torch.ones(count, dtype=torch.bool)
        change = None
    else:
        difference = (output.float() - images).abs().flatten(1)  # [N, C*H*W]
        changed = difference.amax(dim=1) > HALF_GREY_LEVEL
        change = float(difference.mean()) * 255
    unchanged = int((~changed).sum())
    fraction = unchanged / count
    changed_fraction = 1 - fraction
    message = f"{label} changed {count - unchanged} of {count} sample images"
    if change is not None:
        message += f" (mean absolute change {change:.2f} grey levels per pixel)"
    verdict = OK
    if changed_fraction < min_changed_fraction:
        verdict = UNCHANGED
        message += (f", fewer than {min_changed_fraction:.0%}: training with it is training "
                    "without augmentation. Check that its ranges are not all zero and that it "
                    "returns the transformed images.")
    report = AugmentCheck("preset", verdict, message, count, unchanged, fraction, change, name)
    _announce(report, warn)
    return report


# ---- helpers -----------------------------------------------------------------------------

def _numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim < 2:
        raise CnnlabError(f"check_augmented_set: {what} must hold samples on its first axis "
                          f"(e.g. [N, C, H, W]), got shape {array.shape}")
    return array


def _digest(image: np.ndarray) -> bytes:
    # The shape is part of the key: a 32x32 and a 16x64 image with the same bytes differ.
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes() + repr(image.shape).encode(),
                           digest_size=16).digest()


def _grey_levels_per_unit(array: np.ndarray) -> float:
    """uint8 data is already in grey levels; float data is taken to be in [0, 1]."""
    if array.dtype == np.uint8:
        return 1.0
    return 255.0 if float(np.abs(array).max(initial=0.0)) <= 1.0 else 1.0


def _float_images(sample: Any) -> torch.Tensor:
    images = sample if isinstance(sample, torch.Tensor) else torch.as_tensor(np.asarray(sample))
    if images.dim() != 4:
        raise CnnlabError(f"check_preset: the sample must be a batch [N, C, H, W], got shape "
                          f"{tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def _run_without_advancing(augment: Callable, images: torch.Tensor):
    """Call ``augment`` and put its random state back, so the caller's batches stay the same."""
    if hasattr(augment, "state_dict") and hasattr(augment, "load_state_dict"):
        state = copy.deepcopy(augment.state_dict())
        try:
            return augment(images, None)
        finally:
            augment.load_state_dict(state)
    try:
        probe = copy.deepcopy(augment)
    except Exception:  # noqa: BLE001  (an uncopyable callable is still worth checking)
        log.debug("the augmenter cannot be copied; checking it advances its random state")
        probe = augment
    return probe(images, None)


def _announce(report: AugmentCheck, warn: bool) -> None:
    if report.ok:
        log.debug("augmentation check: %s", report.message)
        return
    if warn:
        warnings.warn(report.message, AugmentationWarning, stacklevel=3)
    else:  # the caller asked to handle the verdict itself (e.g. a study showing the mistake)
        log.info("augmentation check: %s", report.message)
