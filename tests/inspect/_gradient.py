"""An independent measurement of receptive fields: which input pixels get a gradient.

The theoretical field of a unit must contain every input pixel whose
gradient with respect to that unit is non-zero. With every weight positive,
positive inputs and max pooling replaced by average pooling of the same
geometry, nothing can cancel or hide a path, so the two sets are equal.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.inspect import find_module


def gradient_support(model: nn.Module, input_shape: tuple[int, ...], layer: str,
                     unit: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Boolean map over the input's spatial positions: True where d(unit)/d(pixel) != 0.

    The unit is a position of the layer's output with all its channels summed:
    after a concatenation channels from different branches see different
    fields, and a row's field is their union.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = (torch.rand((1, *input_shape), generator=generator, dtype=torch.float64) + 0.5)
    inputs.requires_grad_(True)
    captured: list[torch.Tensor] = []
    handle = find_module(model, layer).register_forward_hook(
        lambda _m, _a, output: captured.append(output))
    try:
        model.double().eval()
        model(inputs)
    finally:
        handle.remove()
    captured[0][(0, slice(None), *unit)].sum().backward()
    return inputs.grad[0].abs().sum(0) != 0


def make_positive(model: nn.Module, seed: int = 0) -> nn.Module:
    """Positive weights scaled by fan-in (values stay near 1), and max pooling made average."""
    generator = torch.Generator().manual_seed(seed)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.MaxPool2d) and child.dilation in (1, (1, 1)):
            setattr(model, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                              ceil_mode=child.ceil_mode))
        else:
            make_positive(child, seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.weight.fill_(1.0)
                module.bias.fill_(0.0)
            elif getattr(module, "weight", None) is not None and module.weight.ndim >= 2:
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator)
                                    / fan_in + 0.1 / fan_in)
                if getattr(module, "bias", None) is not None:
                    module.bias.fill_(0.01)
    return model


def theoretical_box(box: list[tuple[int, int]], input_shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean map of the field box clipped to the input."""
    height, width = input_shape[-2:]
    mask = torch.zeros(height, width, dtype=torch.bool)
    (top, bottom), (left, right) = box
    mask[max(top, 0):min(bottom, height - 1) + 1, max(left, 0):min(right, width - 1) + 1] = True
    return mask
