"""The augmentation sanity check: it fires on copies and on do-nothing presets, not on real ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.augment import PRESETS, AffineAugment, AffineSpec, build_augment
from cnnlab.augment.sanity import AugmentationWarning, check_augmented_set, check_preset


@pytest.fixture
def images() -> torch.Tensor:
    """Smooth synthetic images (random blobs), so that small transforms move pixels a little."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (64, 3, 8, 8), generator=generator).float()
    smooth = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")
    return smooth.round().clamp(0, 255).to(torch.uint8)


def _augmented_copy(images: torch.Tensor, preset: str = "keras") -> torch.Tensor:
    augment = build_augment(preset, seed=1)
    out, _ = augment(images.float() / 255, None)
    return (out * 255).round().clamp(0, 255).to(torch.uint8)


def test_duplicated_set_is_reported_as_copies(images):
    # What np.concatenate([x, datagen.flow(x, y).x]) adds: x itself.
    with pytest.warns(AugmentationWarning, match="exact copies"):
        report = check_augmented_set(images, images.clone())
    assert report.verdict == "copies"
    assert report.unchanged == len(images) and report.unchanged_fraction == 1.0
    assert report.mean_abs_change == 0.0


def test_shuffled_keras_style_float_copies_are_found(images):
    x = images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255  # Keras: [N, H, W, C] floats
    shuffled = x[np.random.default_rng(0).permutation(len(x))]
    with pytest.warns(AugmentationWarning):
        report = check_augmented_set(x, shuffled)
    assert report.verdict == "copies"
    assert report.mean_abs_change is not None and report.mean_abs_change > 0  # pairs differ


def test_real_augmented_set_passes_without_warning(images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_augmented_set(images, _augmented_copy(images))
    assert report.ok
    assert report.unchanged_fraction < 0.1
    assert report.mean_abs_change > 1.0


def test_half_copies_is_not_mostly_copies(images):
    # The concatenated set [x, augmented x] is half originals by construction.
    mixed = torch.cat([images, _augmented_copy(images)])
    assert check_augmented_set(images, mixed).ok


def test_mixed_dtypes_are_refused(images):
    with pytest.raises(CnnlabError, match="uint8.*float32"):
        check_augmented_set(images, images.float())


@pytest.mark.parametrize("augment", [AffineAugment(AffineSpec()), AffineAugment(PRESETS["none"]),
                                     lambda inputs, targets: (inputs, targets), None],
                         ids=["zero-ranges", "none-preset", "returns-input", "missing"])
def test_identity_preset_is_reported_unchanged(images, augment):
    with pytest.warns(AugmentationWarning, match="augmentation"):
        report = check_preset(augment, images)
    assert report.verdict == "unchanged"
    assert report.unchanged_fraction == 1.0


@pytest.mark.parametrize("preset", ["keras", "crop", "rotate", "flip"])
def test_real_presets_pass(images, preset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_preset(build_augment(preset, seed=0), images, name=preset)
    assert report.ok, report.message
    assert report.unchanged_fraction < 0.9


def test_check_does_not_change_the_batches_a_run_sees(images):
    checked, unchecked = build_augment("keras", seed=3), build_augment("keras", seed=3)
    check_preset(checked, images, warn=False)
    batch = images.float() / 255
    assert torch.equal(checked(batch, None)[0], unchecked(batch, None)[0])


def test_train_run_records_the_check_in_its_summary(tmp_path, image_folder):
    from cnnlab.runs.image import RunSpec, train_run
    from cnnlab.train import TrainConfig

    spec = RunSpec(model="small_cnn", model_options={"widths": "4", "depth": 1},
                   data=str(image_folder), augment="keras", validation=2, evaluate_test=False)
    result = train_run(spec, TrainConfig(epochs=1, batch_size=4, device="cpu"),
                       tmp_path / "run")
    assert result.summary["augment_check"]["verdict"] == "ok"
    assert result.summary["augment_check"]["name"] == "keras"
