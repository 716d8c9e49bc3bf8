"""Image and mask stay aligned under every joint augmentation."""

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.augment.joint import PRESETS, JointAugment, JointAugmentConfig, joint_augment

# Each geometric operation on its own (always applied), then the presets.
SINGLE_OPERATIONS = {
    "hflip": JointAugmentConfig(hflip=1.0, vflip=0.0),
    "vflip": JointAugmentConfig(hflip=0.0, vflip=1.0),
    "rot90": JointAugmentConfig(hflip=0.0, vflip=0.0, rot90=True),
    "rotate": JointAugmentConfig(hflip=0.0, vflip=0.0, degrees=20.0),
    "crop": JointAugmentConfig(hflip=0.0, vflip=0.0, crop_scale=(0.4, 0.8)),
}
CONFIGS = {**SINGLE_OPERATIONS, **{f"preset-{name}": c for name, c in PRESETS.items()}}
# Operations that move pixels onto pixel centres exactly; the others interpolate the image.
EXACT = {"hflip", "vflip", "rot90", "preset-none", "preset-flips", "preset-dihedral"}


def block_images(count: int = 32, size: int = 64, seed: int = 0):
    """Images of random 8x8-pixel blocks (two grey levels) and the mask image > 0.5."""
    generator = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(count, 1, size // 8, size // 8, generator=generator) > 0.5).float()
    images = torch.nn.functional.interpolate(blocks, size=size, mode="nearest") * 0.8 + 0.1
    return images, (images > 0.5).to(torch.uint8)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mask_equals_thresholded_image_after_augmentation(name):
    torch.manual_seed(0)
    images, masks = block_images()
    out_images, out_masks = JointAugment(CONFIGS[name])(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_masks.dtype == torch.uint8
    assert set(out_masks.unique().tolist()) <= {0, 1}
    agreement = ((out_images > 0.5).to(torch.uint8) == out_masks).float().mean().item()
    if name in EXACT:
        assert agreement == 1.0
    else:
        # Bilinear image vs nearest mask differ only on block edges, about 2% of pixels.
        assert agreement > 0.95
    if name != "preset-none":
        assert not torch.equal(out_masks, masks), "the augmentation changed nothing"


def test_alignment_check_detects_a_misaligned_pair():
    # Control for the test above: augmenting image and mask separately gives a poor match.
    torch.manual_seed(0)
    images, masks = block_images()
    augment = joint_augment("standard")
    out_images, _ = augment(images, masks)
    _, out_masks = augment(images, masks)
    agreement = ((out_images > 0.5).to(torch.uint8) == out_masks).float().mean().item()
    assert agreement < 0.8


def test_each_sample_gets_its_own_transform():
    torch.manual_seed(0)
    images, masks = block_images(count=1)
    images, masks = images.repeat(16, 1, 1, 1), masks.repeat(16, 1, 1, 1)
    _, out_masks = joint_augment("dihedral")(images, masks)
    distinct = {tuple(m.flatten().tolist()) for m in out_masks}
    assert len(distinct) > 3


def test_masks_without_channel_axis_and_float_masks_keep_their_form():
    torch.manual_seed(0)
    images, masks = block_images(count=4)
    _, out = joint_augment("standard")(images, masks[:, 0].float())
    assert out.shape == (4, 64, 64) and out.dtype == torch.float32


def test_bad_inputs_are_clear_errors():
    images, masks = block_images(count=2)
    with pytest.raises(CnnlabError, match="square"):
        joint_augment("dihedral")(images[..., :32], masks[..., :32])
    with pytest.raises(CnnlabError, match="does not match"):
        joint_augment("flips")(images, masks[:1])
    with pytest.raises(CnnlabError, match="unknown joint augmentation"):
        joint_augment("heavy")
    with pytest.raises(CnnlabError, match="crop_scale"):
        JointAugment(JointAugmentConfig(crop_scale=(0.8, 0.4)))
