"""Batched, per-sample random transforms applied on the device, with named presets."""

from cnnlab.augment.affine import PRESETS, AffineAugment, AffineSpec, build_augment

__all__ = ["PRESETS", "AffineAugment", "AffineSpec", "build_augment"]
