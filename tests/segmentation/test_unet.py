"""The compact U-Net: output shape, registry names, size checks, and that it can learn."""

import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.models import build_model
from cnnlab.models.unet import UNet, UNetConfig, unet, unet_small, unet_tiny


@pytest.mark.parametrize("depth,size", [(1, 8), (3, 32), (4, 48)])
def test_output_has_one_logit_per_input_pixel(depth, size):
    model = unet(base_width=4, depth=depth)
    logits = model(torch.rand(2, 1, size, size + 16))
    assert logits.shape == (2, 1, size, size + 16)


def test_registered_variants_have_the_documented_sizes():
    assert isinstance(build_model("unet_tiny"), UNet)
    assert sum(p.numel() for p in unet_tiny().parameters()) == 121_033
    assert sum(p.numel() for p in unet_small().parameters()) == 1_942_289
    assert build_model("unet", base_width=4, depth=2).config == UNetConfig(base_width=4, depth=2)


def test_input_not_divisible_by_two_to_the_depth_is_a_clear_error():
    with pytest.raises(CnnlabError, match="divisible by 8, got 36x36"):
        unet_tiny()(torch.rand(1, 1, 36, 36))


def test_features_then_head():
    model = unet(base_width=4, depth=2, in_channels=3, out_channels=2)
    features = model.forward_features(torch.rand(1, 3, 16, 16))
    assert features.shape == (1, 4, 16, 16)
    assert model.head(features).shape == (1, 2, 16, 16)


def test_tiny_unet_learns_to_segment_bright_squares():
    torch.manual_seed(0)
    images = torch.rand(16, 1, 16, 16) * 0.3
    masks = torch.zeros(16, 1, 16, 16)
    for i in range(16):
        top, left = (i * 3) % 10, (i * 5) % 10
        masks[i, 0, top:top + 5, left:left + 5] = 1
    images = images + 0.6 * masks
    model = unet(base_width=4, depth=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
        loss.backward()
        optimiser.step()
    model.eval()
    accuracy = ((model(images) > 0).float() == masks).float().mean().item()
    assert accuracy > 0.97
