"""Models registered by name and built from a name plus options, in the API and the CLI alike."""

from __future__ import annotations

import difflib
import inspect as _inspect
from collections.abc import Callable

from torch import nn

from cnnlab._util import CnnlabError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator: ``@register_model("lenet5")`` makes ``build_model("lenet5", ...)`` work."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = factory
        return factory

    return decorate


def available_models() -> list[str]:
    return sorted(_MODELS)


def model_options(name: str) -> list[str]:
    """The keyword options a registered model accepts."""
    factory = _lookup(name)
    return [p for p in _inspect.signature(factory).parameters]


def build_model(name: str, **options) -> nn.Module:
    """Build a registered model, e.g. ``build_model("lenet5", num_classes=10, activation="tanh")``.

    Options that are ``None`` are dropped, so a CLI can pass every flag and
    let the model keep its defaults. Unknown options raise a clear error.
    """
    factory = _lookup(name)
    accepted = _inspect.signature(factory).parameters
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CnnlabError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(accepted)}"
        )
    return factory(**options)


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CnnlabError(
            f"model {name!r} is unknown.{hint} Available: {', '.join(available_models())}"
        )
    return _MODELS[name]
