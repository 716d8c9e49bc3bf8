"""Batched augmentation: seeded, per-sample, and faithful to the preset's geometry."""

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.augment import PRESETS, AffineAugment, AffineSpec, build_augment
from cnnlab.augment.affine import sampling_grid


def images(batch=16, size=16, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_same_seed_gives_the_same_augmented_batch():
    x = images()
    first, _ = build_augment("keras", seed=5)(x, None)
    second, _ = build_augment("keras", seed=5)(x, None)
    assert torch.equal(first, second)


def test_augmented_batches_differ_from_the_originals_and_from_each_other():
    x = images()
    augment = build_augment("keras", seed=0)
    one, _ = augment(x, None)
    two, _ = augment(x, None)
    assert not torch.allclose(one, x)
    assert not torch.allclose(one, two)
    # Per-sample parameters: the images of one batch are transformed differently.
    same = images(batch=8).narrow(0, 0, 1).repeat(8, 1, 1, 1)
    out, _ = augment(same, None)
    assert not torch.allclose(out[0], out[1])


def test_targets_pass_through_unchanged():
    labels = torch.arange(16)
    _, out = build_augment("keras", seed=0)(images(), labels)
    assert torch.equal(out, labels)


def test_flip_only_preset_mirrors_exactly_or_keeps_each_image():
    x = images(batch=32)
    out, _ = AffineAugment(AffineSpec(horizontal_flip=True), seed=1)(x, None)
    for original, result in zip(x, out):
        flipped = torch.flip(original, dims=[2])
        assert torch.allclose(result, original, atol=1e-5) or torch.allclose(result, flipped,
                                                                              atol=1e-5)
    mirrored = sum(not torch.allclose(r, o, atol=1e-5) for r, o in zip(out, x))
    assert 4 < mirrored < 28  # about half


def test_pixel_shift_moves_whole_pixels_and_pads_with_zeros():
    x = images(batch=64, size=12) + 0.5  # no zero pixels before shifting
    out, _ = AffineAugment(AffineSpec(shift_pixels=2, fill="constant"), seed=0)(x, None)
    for original, result in zip(x, out):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = torch.zeros_like(original)
                src = original[:, max(0, dy):12 + min(0, dy), max(0, dx):12 + min(0, dx)]
                expected[:, max(0, -dy):12 + min(0, -dy), max(0, -dx):12 + min(0, -dx)] = src
                found = found or torch.allclose(result, expected, atol=1e-5)
        assert found


def test_keras_zoom_above_one_zooms_out():
    """Keras draws z in [1-r, 1+r] and samples the input at z times the output position."""
    x = torch.zeros(1, 1, 33, 33)
    x[..., 8:25, 8:25] = 1.0  # a centred 17x17 square
    augment = AffineAugment(AffineSpec(zoom=0.5, fill="constant"), seed=0)
    # Force z = 1.5 on both axes by overriding the sampler's draw.
    matrix = torch.tensor([[[1.5, 0.0, 0.0], [0.0, 1.5, 0.0]]])
    augment.sample_matrices = lambda b, h, w: matrix
    out, _ = augment(x, None)
    area = (out > 0.5).sum().item()
    assert area < 17 * 17 * 0.6  # the square shrank by about 1/1.5 per side


def test_rotation_keeps_the_centre_pixel():
    x = images(batch=8, size=17)
    out, _ = AffineAugment(AffineSpec(rotation_degrees=30), seed=0)(x, None)
    assert torch.allclose(out[:, :, 8, 8], x[:, :, 8, 8], atol=1e-4)


def test_keras_preset_documents_the_keras_arguments():
    spec = PRESETS["keras"]
    assert (spec.rotation_degrees, spec.width_shift, spec.height_shift) == (30, 0.1, 0.1)
    assert (spec.shear_degrees, spec.zoom, spec.horizontal_flip) == (0.1, 0.1, True)
    assert spec.fill == "nearest"


def test_identity_preset_returns_the_input():
    assert build_augment("none") is None
    x = images()
    out, _ = AffineAugment(AffineSpec(), seed=0)(x, None)
    assert torch.equal(out, x)


def test_unknown_preset_names_the_choices():
    with pytest.raises(CnnlabError, match="keras"):
        build_augment("kerass")


def test_generator_state_round_trips():
    augment = build_augment("keras", seed=0)
    augment(images(), None)
    state = augment.state_dict()
    expected, _ = augment(images(), None)
    fresh = build_augment("keras", seed=99)
    fresh.load_state_dict(state)
    again, _ = fresh(images(), None)
    assert torch.equal(expected, again)


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40), (1, 7)])
def test_sampling_grid_equals_torch_affine_grid(height, width):
    import torch.nn.functional as F

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3))
    expected = F.affine_grid(theta, [5, 3, height, width], align_corners=False)
    grid = sampling_grid(theta, height, width)
    assert grid.shape == expected.shape == (5, height, width, 2)
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-6)
