"""Small building blocks shared by the model families: activations, norms, initialisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab._util import CnnlabError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}

INITS = ("default", "xavier", "kaiming", "orthogonal", "normal", "large")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise CnnlabError(f"activation {name!r} is unknown; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def make_norm(name: str, channels: int) -> nn.Module:
    if name in ("none", None):
        return nn.Identity()
    if name in ("batch", "bn"):
        return nn.BatchNorm2d(channels)
    if name in ("group", "gn"):
        return nn.GroupNorm(min(8, channels), channels)
    raise CnnlabError(f"norm {name!r} is unknown; use none, batch or group")


def initialise(model: nn.Module, scheme: str, activation: str = "relu", std: float = 0.1
               ) -> nn.Module:
    """Re-initialise every conv and linear weight of ``model`` in place.

    ``default``: PyTorch's own (Kaiming-uniform with a=sqrt(5)); ``xavier``:
    Glorot normal, for tanh/sigmoid; ``kaiming``: He normal (fan-in) with the
    gain of ``activation``; ``orthogonal``; ``normal``: N(0, std^2) whatever
    the layer size; ``large``: N(0, (3/sqrt(fan_in))^2), three times He's
    scale, which makes deep plain networks explode. Biases become zero
    except under ``default``.
    """
    if scheme not in INITS:
        raise CnnlabError(f"init {scheme!r} is unknown; use one of {', '.join(INITS)}")
    if scheme == "default":
        return model
    nonlinearity = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh",
                    "sigmoid": "sigmoid"}.get(activation, "relu")
    for module in model.modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight
        if scheme == "xavier":
            nn.init.xavier_normal_(weight, gain=nn.init.calculate_gain(nonlinearity))
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(weight, nonlinearity=nonlinearity)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(weight, gain=nn.init.calculate_gain(nonlinearity))
        elif scheme == "normal":
            nn.init.normal_(weight, 0.0, std)
        elif scheme == "large":
            fan_in = weight[0].numel()
            nn.init.normal_(weight, 0.0, 3.0 / math.sqrt(fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_last_norm(block: nn.Module) -> None:
    """Zero the scale of a residual block's last batch norm, so the block starts as identity."""
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        with torch.no_grad():
            norms[-1].weight.zero_()
