"""Backbones for transfer learning: pretrained weights, intermediate layers, new heads.

A :class:`TransferModel` is four parts in a row::

    images in [0, 1] -> InputAdapter (resize, the backbone's normalisation)
                     -> features (the backbone up to a chosen layer)
                     -> global average pool            [N, C]
                     -> head ("linear", or "mlp": 256 ReLU units, dropout, classifier)

Weights come from torchvision's weight enums (``"imagenet"``; read from the
torch hub cache, downloaded where a network exists), a local file (a
safetensors file or a plain state dict), a cnnlab run directory, or
``"none"``. Weights that cannot be found stop with a :class:`CnnlabError`
that names where they were looked for; there is no silent fallback to random
weights.

Layer names are torchvision's module names (``layer2.3``) or, for the
torchvision ResNets, Keras' ResNet-50 names (``conv3_block4_out``); the
table is :func:`keras_aliases` and docs/transfer.md.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.models.registry import build_model, register_model

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("linear", "mlp")


# ---- the backbone families --------------------------------------------------------------


@dataclass(frozen=True)
class BackboneFamily:
    """What transfer needs to know about one architecture.

    The backbone is ``stem`` modules, then the blocks held in
    ``block_containers`` (each an ``nn.Sequential``), then pooling and the
    ``classifier`` modules that the new head replaces.
    """

    source: str  # "torchvision" or "cnnlab"
    final_layer: str
    stem: tuple[str, ...]  # top-level modules before the first block
    block_containers: tuple[str, ...]  # sequences of blocks, in forward order
    classifier: tuple[str, ...]
    default_size: int
    blocks_per_stage: tuple[int, ...] = ()
    bottleneck: bool = False


def _resnet_family(blocks: tuple[int, ...], bottleneck: bool) -> BackboneFamily:
    return BackboneFamily("torchvision", "layer4", ("conv1", "bn1", "relu", "maxpool"),
                          ("layer1", "layer2", "layer3", "layer4"), ("fc",), 224, blocks,
                          bottleneck)


BACKBONES: dict[str, BackboneFamily] = {
    "resnet18": _resnet_family((2, 2, 2, 2), False),
    "resnet34": _resnet_family((3, 4, 6, 3), False),
    "resnet50": _resnet_family((3, 4, 6, 3), True),
    "resnet101": _resnet_family((3, 4, 23, 3), True),
    "resnet152": _resnet_family((3, 8, 36, 3), True),
    # cnnlab's own small CIFAR ResNet: no ImageNet weights, but a cnnlab run can supply them.
    "fast_resnet": BackboneFamily("cnnlab", "blocks", ("stem",), ("blocks",), ("head",), 32),
}


def available_backbones() -> list[str]:
    """Backbone names that :func:`build_transfer_model` accepts."""
    return sorted(BACKBONES)


def _family(name: str) -> BackboneFamily:
    if name.startswith(("timm/", "timm:")):
        raise CnnlabError(
            f"backbone {name!r}: timm backbones are not supported in this version of cnnlab "
            f"(layer aliases and weight mapping are written for torchvision's ResNets); use one "
            f"of {', '.join(available_backbones())}")
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CnnlabError(f"{name!r} is not a transfer backbone.{hint} Available: "
                          f"{', '.join(available_backbones())}")
    return BACKBONES[name]


def _build_architecture(name: str, options: dict[str, Any]) -> nn.Module:
    """The backbone's full network with random weights (its own classifier still attached)."""
    family = _family(name)
    options = dict(options)
    if family.source == "torchvision":
        from cnnlab.models.resnet import _torchvision_resnet

        return _torchvision_resnet(name, num_classes=1000,
                                   in_channels=int(options.pop("in_channels", 3)),
                                   cifar_stem=bool(options.pop("cifar_stem", False)))
    options.setdefault("num_classes", 10)
    return build_model(name, **options)


# ---- Keras ResNet-50 layer names ----------------------------------------------------------

# Keras' layers without a torchvision module: torchvision pads inside its convolutions.
_KERAS_WITHOUT_COUNTERPART = {
    "input_1": "it is the input itself",
    "conv1_pad": "torchvision pads inside conv1; use conv1_conv or conv1_relu",
    "pool1_pad": "torchvision pads inside the max pool; use conv1_relu or pool1_pool",
    "predictions": "it is the ImageNet classifier, which the new head replaces",
}


def keras_aliases(name: str = "resnet50") -> dict[str, str]:
    """Keras layer name -> torchvision module (graph node) name, for a torchvision ResNet.

    For ResNet-50/101/152 every layer of Keras' ``ResNet50`` naming scheme
    is mapped (``conv3_block4_out`` -> ``layer2.3``, ``conv3_block1_2_relu``
    -> ``layer2.0.relu_1``); for ResNet-18/34, which Keras does not ship,
    the same scheme names the stem and each block's output. One difference
    is architectural, not a naming one: Keras' ResNet50 strides in the first
    1x1 convolution of a stage's first block, torchvision (ResNet v1.5) in
    its 3x3, so ``convS_block1_1_conv/_bn/_relu`` of stages 3-5 have twice
    the height and width in torchvision (:data:`KERAS_SHAPE_DIFFERENCES`).
    """
    family = _family(name)
    if family.source != "torchvision":
        return {}
    aliases = {"conv1_conv": "conv1", "conv1_bn": "bn1", "conv1_relu": "relu",
               "pool1_pool": "maxpool"}
    for stage_index, block_count in enumerate(family.blocks_per_stage):
        keras_stage, torch_stage = f"conv{stage_index + 2}", f"layer{stage_index + 1}"
        for block_index in range(block_count):
            keras_block = f"{keras_stage}_block{block_index + 1}"
            torch_block = f"{torch_stage}.{block_index}"
            aliases[f"{keras_block}_out"] = torch_block
            if not family.bottleneck:
                continue
            if block_index == 0:
                aliases[f"{keras_block}_0_conv"] = f"{torch_block}.downsample.0"
                aliases[f"{keras_block}_0_bn"] = f"{torch_block}.downsample.1"
            # torchvision's Bottleneck calls one ReLU module three times; FX names the calls
            # relu, relu_1, relu_2 (the last is the block output).
            aliases.update({
                f"{keras_block}_1_conv": f"{torch_block}.conv1",
                f"{keras_block}_1_bn": f"{torch_block}.bn1",
                f"{keras_block}_1_relu": f"{torch_block}.relu",
                f"{keras_block}_2_conv": f"{torch_block}.conv2",
                f"{keras_block}_2_bn": f"{torch_block}.bn2",
                f"{keras_block}_2_relu": f"{torch_block}.relu_1",
                f"{keras_block}_3_conv": f"{torch_block}.conv3",
                f"{keras_block}_3_bn": f"{torch_block}.bn3",
                f"{keras_block}_add": f"{torch_block}.add",
            })
    aliases["avg_pool"] = "avgpool"
    return aliases


KERAS_SHAPE_DIFFERENCES = frozenset(
    f"conv{stage}_block1_1_{kind}" for stage in (3, 4, 5) for kind in ("conv", "bn", "relu"))
"""Keras ResNet-50 layers whose torchvision counterpart has 2x the height and width."""

_KERAS_STAGES = {"conv1": "stem", "conv2": "layer1", "conv3": "layer2", "conv4": "layer3",
                 "conv5": "layer4"}


# ---- layers a user can pick ---------------------------------------------------------------


@dataclass(frozen=True)
class BackboneLayer:
    """One pickable layer: its torchvision/cnnlab name, Keras alias and output shape (C, H, W)."""

    name: str
    alias: str | None
    shape: tuple[int, ...]


def _graph_nodes(model: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    _, eval_nodes = get_graph_node_names(model)
    return eval_nodes


def backbone_layer_names(name: str, input_size: int | None = None, *, every_node: bool = False,
                         backbone_options: dict | None = None) -> list[BackboneLayer]:
    """The layers of backbone ``name`` that ``layer=`` accepts, with output shapes.

    By default: the stem's modules, every block's output and the final
    pooling, each with its Keras alias where one exists; ``every_node=True``
    lists every graph node (each convolution, batch norm, ReLU call, add).
    Shapes are measured with one forward pass at ``input_size`` (default:
    224 for torchvision ResNets, 32 for cnnlab's CIFAR networks).
    This is what ``cnnlab inspect`` shows for a backbone.

    Example: ``[l.name for l in backbone_layer_names("resnet50")][:5]``
    gives ``['conv1', 'bn1', 'relu', 'maxpool', 'layer1.0']``.
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    family = _family(name)
    model = _build_architecture(name, backbone_options or {}).eval()
    if every_node:
        nodes = [n for n in _graph_nodes(model) if n != "x" and
                 not any(n == c or n.startswith(c + ".") for c in family.classifier)]
    else:
        stem = [n for n in _graph_nodes(model) if n.split(".")[0] in family.stem]
        nodes = stem + backbone_units(model, family)[1:]
        nodes += ["avgpool"] if family.source == "torchvision" else []
    size = input_size or family.default_size
    in_channels = int((backbone_options or {}).get("in_channels", 3))
    extractor = create_feature_extractor(model, {n: n for n in nodes})
    with torch.no_grad():
        outputs = extractor(torch.zeros(1, in_channels, size, size))
    inverse = {module: alias for alias, module in keras_aliases(name).items()}
    return [BackboneLayer(n, inverse.get(n), tuple(outputs[n].shape[1:])) for n in nodes]


def backbone_units(model: nn.Module, family: BackboneFamily) -> list[str]:
    """The backbone in forward order as fine-tuning units: ``"stem"``, then every block."""
    blocks = [f"{container}.{index}" for container in family.block_containers
              for index in range(len(model.get_submodule(container)))]
    return ["stem", *blocks]


def resolve_layer(name: str, layer: str | None, *, backbone_options: dict | None = None) -> str:
    """The torchvision/cnnlab node name for ``layer`` (a Keras alias or a module name).

    ``None`` means the final feature map (``layer4`` for ResNets). Raises a
    :class:`CnnlabError` with close matches for an unknown name.
    """
    family = _family(name)
    if layer is None or layer in ("final", "last"):
        return family.final_layer
    if layer in _KERAS_WITHOUT_COUNTERPART:
        raise CnnlabError(f"--layer {layer}: Keras' {layer} has no torchvision counterpart "
                          f"({_KERAS_WITHOUT_COUNTERPART[layer]})")
    aliases = keras_aliases(name)
    if layer in aliases:
        if layer in KERAS_SHAPE_DIFFERENCES:
            warnings.warn(f"--layer {layer}: torchvision's {aliases[layer]} has twice the height "
                          "and width of Keras' layer (torchvision strides in the next "
                          "convolution)", stacklevel=2)
        return aliases[layer]
    model = _build_architecture(name, backbone_options or {})
    modules = {n for n, _ in model.named_modules() if n}
    nodes = set(_graph_nodes(model))
    classifier = family.classifier
    if (layer in modules or layer in nodes) and not any(
            layer == c or layer.startswith(c + ".") for c in classifier):
        return layer
    candidates = sorted((modules | nodes | set(aliases)) - {"x"})
    close = difflib.get_close_matches(layer, candidates, n=4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise CnnlabError(f"--layer {layer!r} is not a layer of {name}.{hint} "
                      f"`cnnlab inspect {name}` lists the layer names (torchvision's and Keras').")


# ---- where weights come from --------------------------------------------------------------


@dataclass
class LoadedWeights:
    """A state dict plus where it came from and the normalisation it was trained with."""

    state: dict[str, torch.Tensor] | None
    description: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    backbone: str | None = None  # the architecture the weights dictate (a cnnlab run)
    backbone_options: dict[str, Any] = field(default_factory=dict)


def hub_weights_path(name: str, weights: str = "imagenet") -> tuple[Path, Any]:
    """Where torchvision keeps ``name``'s weights in the torch hub cache, and the weights enum.

    ``weights`` is ``"imagenet"`` (the model's DEFAULT weights) or an enum
    member name such as ``"IMAGENET1K_V1"``. The folder is
    ``torch.hub.get_dir()/checkpoints`` ($TORCH_HOME/hub/checkpoints).
    """
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise CnnlabError(f"torchvision has no pretrained weights for {name!r}") from None
    key = "DEFAULT" if weights.lower() in ("imagenet", "default") else weights.upper()
    try:
        member = enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        members = ", ".join(m.name for m in enum)
        raise CnnlabError(f"--weights {weights}: {name} has weights {members} (or 'imagenet' "
                          "for the default)") from None
    filename = os.path.basename(urlparse(member.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, member


def _is_enum_name(weights: str) -> bool:
    return weights.lower() in ("imagenet", "default") or weights.upper().startswith("IMAGENET")


def load_weights(backbone: str | None, weights: str | os.PathLike | None, *,
                 download: bool = True) -> LoadedWeights:
    """Read the weights that ``weights`` names (no model is built here).

    ``weights``: ``None``/``"none"`` (random), ``"imagenet"`` or a
    torchvision enum name, a path to ``.safetensors``/``.pt``/``.pth``, or a
    cnnlab run directory. Files are read safely: safetensors, or
    ``torch.load(weights_only=True)``, which refuses pickles that would run
    code. ``download=False`` never touches the network.
    """
    if weights is None or str(weights).lower() == "none":
        return LoadedWeights(None, "none (random initialisation)")
    text = str(weights)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_run_weights(path)
    if path.is_file():
        state = read_state_dict(path)
        return LoadedWeights(state, f"file {path}", IMAGENET_MEAN, IMAGENET_STD)
    if _is_enum_name(text):
        if backbone is None:
            raise CnnlabError(f"--weights {text} needs a backbone name (--model resnet50)")
        return _load_hub_weights(backbone, text, download)
    raise CnnlabError(
        f"--weights {text}: no such file or run directory (looked at {path.resolve()}). Pass "
        "imagenet, none, a .safetensors/.pt/.pth file, or a cnnlab run directory such as "
        "runs/pretrain.")


def _load_hub_weights(backbone: str, weights: str, download: bool) -> LoadedWeights:
    if _family(backbone).source != "torchvision":
        raise CnnlabError(f"--weights {weights}: {backbone} has no ImageNet weights; pass a "
                          "cnnlab run directory or a file, or use a torchvision ResNet")
    path, member = hub_weights_path(backbone, weights)
    label = f"torchvision {type(member).__name__}.{member.name}"
    mean, std = tuple(member.transforms().mean), tuple(member.transforms().std)
    if path.exists():
        _check_hub_hash(path)
        return LoadedWeights(read_state_dict(path), f"{label} from {path}", mean, std)
    reason = "downloading is switched off"
    if download:
        try:
            state = torch.hub.load_state_dict_from_url(member.url, progress=False,
                                                       check_hash=True, weights_only=True)
            return LoadedWeights(state, f"{label} downloaded to {path}", mean, std)
        except (OSError, RuntimeError) as error:  # no network (URLError), a refused hash
            reason = f"downloading {member.url} failed ({error})"
    raise CnnlabError(
        f"{label} weights for {backbone} are not available: looked for {path} (the torch hub "
        f"cache, torch.hub.get_dir()/checkpoints) and {reason}. To provide them, copy "
        f"{path.name} from a machine with a network into {path.parent} (or set TORCH_HOME to a "
        f"folder holding hub/checkpoints/{path.name}), or pass --weights PATH to a state-dict "
        "file, --weights runs/NAME to transfer from a cnnlab run, or --weights none for "
        "random initialisation.")


def _check_hub_hash(path: Path) -> None:
    """torchvision names its files NAME-<first 8+ hex of sha256>.pth; check that prefix."""
    stem = path.stem
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if not (len(prefix) >= 8 and all(c in "0123456789abcdef" for c in prefix)):
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        raise CnnlabError(f"{path} is corrupt: its sha256 does not start with {prefix} as its "
                          "name promises; delete it and copy or download it again")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: safetensors, or a plain-tensor torch file (weights_only).

    Checkpoints that wrap the state (``{"model": ...}``, ``{"state_dict": ...}``)
    are unwrapped, and DDP's ``module.`` and torch.compile's ``_orig_mod.``
    prefixes removed. A pickle that would run code is refused.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CnnlabError(f"{path} is not a readable safetensors file ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CnnlabError(
                f"{path} was refused: it is not a plain-tensor state dict and loading it could "
                f"run code ({str(error).splitlines()[0]}). Only load files you trust; save "
                "weights as safetensors or with torch.save(model.state_dict(), PATH).") from None
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise CnnlabError(f"{path} is not a readable weights file ({error}); it may be "
                              "truncated") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CnnlabError(f"{path} does not hold a state dict (name -> tensor)")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def _load_run_weights(run_dir: Path) -> LoadedWeights:
    """The weights of a cnnlab run: its model.safetensors, its architecture and statistics."""
    config_path, weights_path = run_dir / "config.json", run_dir / "model.safetensors"
    if not config_path.exists():
        raise CnnlabError(f"--weights {run_dir}: a folder but not a cnnlab run (no config.json); "
                          "pass a run directory written by cnnlab train, or a weights file")
    if not weights_path.exists():
        raise CnnlabError(f"--weights {run_dir}: the run has no model.safetensors (it did not "
                          f"finish); looked for {weights_path}")
    config = json.loads(config_path.read_text())
    run = config.get("run", {})
    model_name, options = run.get("model"), dict(run.get("model_options", {}))
    data = config.get("data", {})
    mean, std = data.get("mean"), data.get("std")
    if model_name == "transfer":  # a transfer run: its backbone, normalised as it was
        model_name = options.get("backbone")
        mean, std = options.get("mean"), options.get("std")
        options = dict(options.get("backbone_options") or {})
    if model_name not in BACKBONES:
        raise CnnlabError(f"--weights {run_dir}: the run trained a {model_name!r}, which is not a "
                          f"transfer backbone ({', '.join(available_backbones())})")
    state = read_state_dict(weights_path)
    if any(key.startswith("features.") for key in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    options = {k: v for k, v in options.items() if k not in ("num_classes",)}
    return LoadedWeights(state, f"cnnlab run {run_dir}",
                         tuple(mean) if mean else None, tuple(std) if std else None,
                         model_name, options)


def _apply_weights(model: nn.Module, loaded: LoadedWeights, family: BackboneFamily) -> set[str]:
    """Copy ``loaded`` into ``model`` (classifier excluded); return the keys that were set."""
    if loaded.state is None:
        return set()
    own = {k: v for k, v in model.state_dict().items()
           if not any(k.startswith(c + ".") for c in family.classifier)}
    incoming = {k: v for k, v in loaded.state.items()
                if not any(k.startswith(c + ".") for c in family.classifier)}
    unexpected = sorted(set(incoming) - set(own))
    if unexpected:
        raise CnnlabError(
            f"weights from {loaded.description} do not fit this backbone: {len(unexpected)} "
            f"unexpected tensors ({', '.join(unexpected[:4])}...). Are they for another "
            "architecture?")
    for key, value in incoming.items():
        if value.shape != own[key].shape:
            raise CnnlabError(
                f"weights from {loaded.description} do not fit: {key} is {tuple(value.shape)} "
                f"there but {tuple(own[key].shape)} in this backbone (e.g. cifar_stem or "
                "in_channels differ)")
    model.load_state_dict(incoming, strict=False)
    return set(incoming)


def state_hash(module: nn.Module) -> str:
    """A sha256 (16 hex digits) of every tensor in ``module``'s state, for cache keys."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()[:16]


# ---- the transfer model -------------------------------------------------------------------


class InputAdapter(nn.Module):
    """Resize to the backbone's input size and normalise with the backbone's statistics.

    Takes float images in [0, 1]. A one-channel image is repeated to the
    three channels a colour backbone expects.
    """

    def __init__(self, size: int | None, mean: Sequence[float] | None,
                 std: Sequence[float] | None, in_channels: int = 3) -> None:
        super().__init__()
        self.size = size
        self.in_channels = in_channels
        # Not persistent: the options rebuild them, so state dicts hold only learned weights.
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = self.std = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.size)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class TransferModel(nn.Module):
    """adapter -> backbone features at one layer -> global average pool -> head.

    ``frozen`` names modules inside ``features`` that do not learn: their
    parameters have ``requires_grad=False`` and :meth:`train` keeps them in
    eval mode, so their batch-norm running statistics stay as loaded too.
    ``encode(x)`` gives the pooled features [N, C] that a feature cache stores.
    """

    def __init__(self, adapter: InputAdapter, features: nn.Module, layer: str, head: nn.Module,
                 frozen: Sequence[str] = (), options: dict | None = None,
                 provenance: dict | None = None) -> None:
        super().__init__()
        self.adapter = adapter
        self.features = features
        self.layer = layer
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head
        self.frozen = tuple(frozen)
        self.options = dict(options or {})
        self.provenance = dict(provenance or {})
        for name in self.frozen:
            for parameter in self.features.get_submodule(name).parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    @property
    def fully_frozen(self) -> bool:
        return "" in self.frozen

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for name in self.frozen:
            self.features.get_submodule(name).eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features [N, C] for images in [0, 1] [N, C_in, H, W]."""
        out = self.features(self.adapter(x))[self.layer]
        return self.pool(out) if out.dim() == 4 else out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone parameters that learn (empty when frozen)."""
        return [p for p in self.features.parameters() if p.requires_grad]


def make_head(kind: str, in_features: int, num_classes: int, hidden_units: int = 256,
              dropout: float = 0.5) -> nn.Module:
    """``linear``: one linear layer; ``mlp``: linear(256) -> ReLU -> dropout -> linear."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden_units), nn.ReLU(),
                             nn.Dropout(dropout), nn.Linear(hidden_units, num_classes))
    raise CnnlabError(f"--head {kind!r} is unknown; use one of {', '.join(HEADS)}")


def frozen_modules(model: nn.Module, family: BackboneFamily, freeze: bool,
                   fine_tune_from: str | None) -> tuple[str, ...]:
    """Which modules of the backbone stay fixed: all (``freeze``), those before a unit, none.

    ``fine_tune_from`` names a block (``layer3.1``), a stage (``layer3`` =
    its first block; ``stem`` trains everything) or a Keras stage (``conv4``
    = ``layer3``). ``("",)`` means the whole backbone.
    """
    if freeze and fine_tune_from is not None:
        raise CnnlabError("--freeze and --fine-tune-from contradict each other: --freeze "
                          "keeps the whole backbone fixed; pick one")
    if freeze:
        return ("",)
    if fine_tune_from is None:
        return ()
    units = backbone_units(model, family)
    start = _KERAS_STAGES.get(fine_tune_from, fine_tune_from) \
        if family.source == "torchvision" else fine_tune_from
    if start in family.block_containers:
        start = f"{start}.0"
    if start not in units:
        stages = ["stem", *family.block_containers]
        raise CnnlabError(f"--fine-tune-from {fine_tune_from!r} is not a stage or block of this "
                          f"backbone; stages: {', '.join(stages)}; blocks: {units[1]} ... "
                          f"{units[-1]}")
    frozen: list[str] = []
    for unit in units[:units.index(start)]:
        frozen.extend(family.stem if unit == "stem" else (unit,))
    return tuple(frozen)


def build_transfer_model(backbone: str | None, weights: str | os.PathLike | None = "imagenet",
                         *, num_classes: int, layer: str | None = None, head: str = "linear",
                         resize: int | None = None, freeze: bool = False,
                         fine_tune_from: str | None = None, hidden_units: int = 256,
                         dropout: float = 0.5, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None,
                         backbone_options: dict | None = None, download: bool = True
                         ) -> TransferModel:
    """A backbone with loaded weights, cut at ``layer``, with a new head.

    ``backbone`` may be ``None`` when ``weights`` is a cnnlab run (the run
    names it). ``mean``/``std`` override the weights' own normalisation
    (ImageNet statistics for torchvision weights and files, the run's
    statistics for a cnnlab run). ``resize`` sets the backbone's input size
    (images are resized on the device per batch).

    Example::

        model = build_transfer_model("resnet50", "imagenet", num_classes=10,
                                     layer="conv3_block4_out", head="mlp", freeze=True,
                                     resize=224)
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    loaded = load_weights(backbone, weights, download=download)
    if loaded.backbone is not None:
        if backbone is not None and backbone != loaded.backbone:
            raise CnnlabError(f"--weights {weights} holds a {loaded.backbone}, not a {backbone}; "
                              f"pass --model {loaded.backbone} or leave --model out")
        backbone = loaded.backbone
    if backbone is None:
        raise CnnlabError("no backbone named: pass --model (e.g. resnet18) or --weights runs/NAME")
    options = {**loaded.backbone_options, **(backbone_options or {})}
    family = _family(backbone)
    architecture = _build_architecture(backbone, options)
    loaded_keys = _apply_weights(architecture, loaded, family)

    node = resolve_layer(backbone, layer, backbone_options=options)
    features = create_feature_extractor(architecture, {node: node})
    if loaded.state is not None:
        needed = {k for k in features.state_dict() if not k.endswith("num_batches_tracked")}
        missing = sorted(needed - loaded_keys)
        if missing:
            raise CnnlabError(f"weights from {loaded.description} lack {len(missing)} tensors "
                              f"this backbone needs up to {node} ({', '.join(missing[:4])}...)")
    mean = tuple(mean) if mean is not None else loaded.mean
    std = tuple(std) if std is not None else loaded.std
    if mean is None:
        log.info("no normalisation given for %s weights; using ImageNet's statistics",
                 loaded.description)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    in_channels = int(options.get("in_channels", 3))
    adapter = InputAdapter(resize, mean, std, in_channels)

    channels = _feature_channels(adapter, features, node, resize or family.default_size,
                                 in_channels)
    model_options = {
        "backbone": backbone, "backbone_options": options, "layer": node, "head": head,
        "resize": resize, "mean": list(mean), "std": list(std), "hidden_units": hidden_units,
        "dropout": dropout, "freeze": freeze, "fine_tune_from": fine_tune_from,
        "num_classes": num_classes}
    frozen = frozen_modules(architecture, family, freeze, fine_tune_from)
    present = {n for n, _ in features.named_modules()}
    frozen = tuple(n for n in frozen if n in present)
    model = TransferModel(adapter, features, node,
                          make_head(head, channels, num_classes, hidden_units, dropout),
                          frozen, model_options,
                          {"weights": loaded.description, "requested_layer": layer,
                           "feature_channels": channels})
    if fine_tune_from is not None and not model.backbone_parameters():
        raise CnnlabError(f"--fine-tune-from {fine_tune_from}: nothing left to fine-tune, "
                          f"the features end at {node}, before it; pick an earlier stage, "
                          "or use --freeze")
    model.provenance["weights_hash"] = state_hash(model.features)
    return model


def _feature_channels(adapter: InputAdapter, features: nn.Module, node: str, size: int,
                      in_channels: int) -> int:
    # Channels do not depend on the input size, so probe small: ResNet-50 at 224 costs ~1 s,
    # and at 32 pixels every ResNet still has a 1x1 map left.
    probe_size = min(size, 32)
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(adapter(torch.zeros(1, in_channels, probe_size, probe_size)))[node]
    features.train(was_training)
    return int(out.shape[1]) if out.dim() == 4 else int(out.flatten(1).shape[1])


@register_model("transfer")
def transfer(backbone: str = "resnet18", num_classes: int = 10, in_channels: int = 3,
             layer: str | None = None, head: str = "linear", resize: int | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             hidden_units: int = 256, dropout: float = 0.5, freeze: bool = False,
             fine_tune_from: str | None = None, backbone_options: dict | None = None
             ) -> nn.Module:
    """A transfer model rebuilt from a run's options, with random weights (load the run's).

    This is how ``cnnlab evaluate`` rebuilds a transfer run; to start one
    from pretrained weights use :func:`build_transfer_model`.
    """
    options = dict(backbone_options or {})
    if in_channels != 3:
        options["in_channels"] = in_channels
    return build_transfer_model(
        backbone, None, num_classes=num_classes, layer=layer, head=head, resize=resize,
        freeze=freeze, fine_tune_from=fine_tune_from, hidden_units=hidden_units,
        dropout=dropout, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD,
        backbone_options=options)
