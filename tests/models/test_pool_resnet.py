"""pool_resnet, the fast preset's network: a fixed whitening stem and residual pool stages."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab._util import CnnlabError
from cnnlab.models import build_model


def correlated_images(count=300, size=12, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated, like photographs."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(count, 1, size + 1, size + 1, generator=generator)
    smooth = F.avg_pool2d(base, 2, stride=1)  # [N, 1, size, size], neighbours share pixels
    noise = 0.1 * torch.randn(count, 3, size, size, generator=generator)
    return smooth.expand(-1, 3, -1, -1) * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1) + noise


def test_fitted_stem_whitens_the_patches_it_was_fitted_on():
    model = build_model("pool_resnet", widths="8,8,8")
    images = correlated_images()
    model.fit_whitening(images, eps=0)  # no regularisation of the weakest directions: exact

    # Measured through the convolution itself, not the unfold used to fit it: the first half of
    # the stem's channels has the identity as covariance; the second half is its negation.
    with torch.no_grad():
        out = model.whiten(images)  # [N, 24, size - 1, size - 1]
    half = out.shape[1] // 2
    channels = out[:, :half].permute(1, 0, 2, 3).reshape(half, -1)
    covariance = torch.cov(channels)
    assert torch.allclose(covariance, torch.eye(half), atol=0.02)
    assert torch.equal(out[:, half:], -out[:, :half])
    # the default eps damps the weakest direction (variance lambda / (lambda + eps) < 1) and
    # leaves the strong ones whitened
    model.fit_whitening(images)
    with torch.no_grad():
        damped = torch.cov(model.whiten(images)[:, :half].permute(1, 0, 2, 3).reshape(half, -1))
    assert damped.diag().min() < 0.99 and damped.diag().max() == pytest.approx(1, abs=0.01)
    # the raw patches were far from white
    raw = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12).T
    correlation = torch.corrcoef(raw)
    assert correlation[0, 4] > 0.9  # a pixel's red and green values
    assert (torch.cov(raw) - torch.eye(12)).abs().max() > 0.5


def test_the_stem_is_never_trained_and_the_rest_is():
    model = build_model("pool_resnet", widths=(8, 8, 8), num_classes=3)
    model.fit_whitening(correlated_images())
    stem = model.whiten.weight.clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p is not model.whiten.weight for p in trainable)
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    loss = F.cross_entropy(model(correlated_images(16, 16)), torch.tensor([0, 1, 2, 0] * 4))
    loss.backward()
    optimizer.step()
    assert torch.equal(model.whiten.weight, stem) and model.whiten.weight.grad is None
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_residual_branches_start_at_zero():
    model = build_model("pool_resnet", widths=(8, 16, 16))
    x = model.stem_act(model.whiten(torch.randn(4, 3, 32, 32)))
    for stage in model.stages:
        inner = stage.act(stage.norm(stage.pool(stage.conv(x))))
        assert torch.equal(stage.branch(inner), torch.zeros_like(inner))
        assert torch.equal(stage(x), inner)
        x = inner


def test_shapes_sizes_and_options():
    model = build_model("pool_resnet", num_classes=7)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    # the default: stem 24 channels, stages 64/256/256 with two 3x3 convolutions each
    convs = 24 * 64 * 9 + 64 * 64 * 9 + 64 * 256 * 9 + 256 * 256 * 9 * 3
    norms = 2 * 2 * (64 + 256 + 256)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == convs + norms + 256 * 7
    one_channel = build_model("pool_resnet", in_channels=1, widths="4,4,4", num_classes=2)
    assert one_channel(torch.rand(3, 1, 9, 9)).shape == (3, 2)


def test_bad_sizes_and_shapes_are_clear_errors():
    model = build_model("pool_resnet", widths="4,4,4")
    with pytest.raises(CnnlabError, match="at least 9x9 pixels.*got 8x8"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(CnnlabError, match=r"fit_whitening needs images \[N, 3, H, W\]"):
        model.fit_whitening(torch.rand(5, 1, 8, 8))
    with pytest.raises(CnnlabError, match="positive channel counts"):
        build_model("pool_resnet", widths="64,0,256")


def test_torch_fx_traces_it_with_the_size_check_kept():
    # `cnnlab inspect` reads the graph from torch.fx: the size check must not stop the trace.
    model = build_model("pool_resnet", widths="4,4,4").eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(traced(x), model(x))
    with pytest.raises(CnnlabError, match="at least 9x9"):
        traced(torch.rand(1, 3, 8, 8))
