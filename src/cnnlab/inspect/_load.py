"""Build the model to inspect from a name: cnnlab's registry, torchvision, or module:factory."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab._util import CnnlabError

log = logging.getLogger(__name__)


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    """``["num_classes=10", "aux_logits=false"]`` -> ``{"num_classes": 10, "aux_logits": False}``.

    Values are Python literals where they parse as one (numbers, tuples,
    None); ``true``/``false`` are booleans; anything else stays a string.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise CnnlabError(f"--option {item!r} must look like NAME=VALUE, e.g. num_classes=10")
        options[key.strip()] = _literal(text.strip())
    return options


def _literal(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _cnnlab_registry() -> tuple[list[str], Callable[..., nn.Module] | None]:
    # The models layer may be absent in a partial install; torchvision still works then.
    try:
        from cnnlab.models import available_models, build_model
    except ImportError as error:
        log.debug("cnnlab.models is not importable (%s); using torchvision only", error)
        return [], None
    return list(available_models()), build_model


def torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def known_model_names() -> list[str]:
    """cnnlab's registered models, then torchvision's."""
    names, _ = _cnnlab_registry()
    return names + [n for n in torchvision_names() if n not in names]


def load_model(source: str, options: dict[str, Any] | None = None,
               meta: bool = False) -> nn.Module:
    """The model called ``source``, built with ``options`` (keyword arguments).

    ``source`` is a cnnlab model (``cnnlab.models.available_models()``), a
    torchvision model (built with ``weights=None``: inspection needs no
    trained weights), or ``package.module:factory`` / ``path/to/file.py:factory``
    where ``factory`` is a callable returning a module, or a module itself.
    With ``meta`` the parameters are created on the meta device: nothing is
    allocated or initialised, which makes large models instant to inspect.
    """
    options = dict(options or {})
    if meta:
        try:
            with torch.device("meta"):
                return load_model(source, options, meta=False)
        except CnnlabError:
            raise
        except Exception as error:  # noqa: BLE001  (any factory failure on meta: retry on CPU)
            log.info("building %s on the meta device failed (%s); building on the CPU",
                     source, error)
    if ":" in source:
        return _from_factory(source, options)

    names, build_model = _cnnlab_registry()
    if source in names and build_model is not None:
        if source in torchvision_names():
            log.info("%s is cnnlab's own %s; for torchvision's write torchvision.models:%s",
                     source, source, source)
        return build_model(source, **options)

    tv_names = torchvision_names()
    if source in tv_names:
        import torchvision

        if source in ("googlenet", "inception_v3"):
            # Their default init draws truncated normals with SciPy and warns; the
            # weights do not matter for inspection.
            options.setdefault("init_weights", False)
        import inspect as signature_inspect

        builder = torchvision.models.get_model_builder(source)
        if "weights_backbone" in signature_inspect.signature(builder).parameters:
            # Detection and segmentation models would download an ImageNet backbone.
            options.setdefault("weights_backbone", None)
        try:
            return torchvision.models.get_model(source, weights=None, **options)
        except TypeError as error:
            raise CnnlabError(f"torchvision model {source!r} rejected options {options}: "
                              f"{error}") from error

    candidates = list(dict.fromkeys(names + tv_names))
    close = difflib.get_close_matches(source, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise CnnlabError(
        f"model {source!r} is unknown.{hint} Use a cnnlab model ({', '.join(names) or 'none'}), "
        "a torchvision model name (torchvision.models.list_models()), a layer spec such as "
        "\"conv3x3-16, conv3x3-32\", or module:factory."
    )


def _from_factory(source: str, options: dict[str, Any]) -> nn.Module:
    module_name, _, attribute = source.rpartition(":")
    if not module_name or not attribute:
        raise CnnlabError(f"{source!r} must look like package.module:factory or file.py:factory")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise CnnlabError(f"{source!r}: file {path} does not exist")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise CnnlabError(f"{source!r}: cannot import {module_name} ({error})") from error
    if not hasattr(module, attribute):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attribute, public, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CnnlabError(f"{source!r}: {module_name} has no attribute {attribute!r}.{hint}")
    target = getattr(module, attribute)
    if isinstance(target, nn.Module):
        if options:
            raise CnnlabError(f"{source!r} is a module instance; it takes no options")
        return target
    if not callable(target):
        raise CnnlabError(f"{source!r} is neither a module nor a callable that returns one")
    try:
        model = target(**options)
    except TypeError as error:
        raise CnnlabError(f"{source!r} rejected options {options}: {error}") from error
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"{source!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
