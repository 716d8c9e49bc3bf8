"""A one-line text form for what-if stacks of layers, and their arithmetic.

Grammar (items separated by commas; case and spaces do not matter)::

    conv<K>[x<K>...]-<C>[/options]    convolution to C channels, e.g. conv3x3-16, conv5-6
    dwconv<K>[x<K>...][/options]      depthwise convolution (one filter per channel)
    tconv<K>[x<K>...]-<C>[/options]   transposed convolution, e.g. tconv2x2-16/s2
    maxpool<K>[/options]              max pooling; stride defaults to the kernel
    avgpool<K>[/options]              average pooling; stride defaults to the kernel
    gap                               global average pooling to 1x1
    fc-<N>  (or linear-<N>)           fully connected layer to N units (flattens first)
    flatten, relu, sigmoid, tanh, gelu, silu, dropout, bn

    options: s<stride> p<padding> d<dilation> g<groups>, after slashes:
             conv3x3-32/s2/p1 or conv3x3-32/s2p1

One kernel size (``conv3``) applies to every spatial dimension. Padding
defaults to 0 (PyTorch's default), so ``conv3x3-16`` shrinks a 32x32 map to
30x30. The input is ``CxHxW`` with numbers or names: ``3x32x32``, ``3xNxN``.

The arithmetic here is the textbook recurrence along one chain of layers,
written independently of the graph analysis, so each can check the other:
receptive field ``r' = r + (k-1)*d*j``, jump ``j' = j*s``, centre of the
first unit ``c' = c + ((k-1)*d/2 - p)*j``. For each layer it also counts
what the same connections would cost without weight sharing (a locally
connected layer: one kernel per output position) and as a fully connected
layer (every output unit connected to every input unit).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from cnnlab._util import CnnlabError

GRAMMAR = (
    "items separated by commas: convKxK-C, dwconvKxK, tconvKxK-C, maxpoolK, avgpoolK "
    "(options after slashes: sS stride, pP padding, dD dilation, gG groups, e.g. "
    "conv3x3-32/s2p1), gap, fc-N, flatten, relu, sigmoid, tanh, gelu, silu, dropout, bn"
)

_KERNEL_LAYER = re.compile(
    r"^(?P<kind>conv|dwconv|tconv|maxpool|avgpool)(?P<kernel>\d+(?:x\d+)*)"
    r"(?:-(?P<channels>\d+))?(?P<options>(?:/[a-z0-9]+)*)$")
_FC = re.compile(r"^(?:fc|linear)-(?P<units>\d+)$")
_SIMPLE = {"gap", "flatten", "relu", "sigmoid", "tanh", "gelu", "silu", "dropout", "bn"}
_OPTIONS = {"conv": "spdg", "dwconv": "spd", "tconv": "spdg", "maxpool": "spd", "avgpool": "sp"}


@dataclass(frozen=True)
class SpecLayer:
    """One parsed item of a layer spec."""

    text: str
    kind: str
    kernel: tuple[int, ...] = ()
    channels: int | None = None  # output channels of conv/tconv, units of fc
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1


def looks_like_spec(text: str) -> bool:
    """True when every comma-separated item parses as a spec layer."""
    try:
        parse_spec(text)
    except CnnlabError:
        return False
    return True


def parse_spec(text: str, spatial_dims: int | None = None) -> list[SpecLayer]:
    """Parse ``"conv3x3-16, conv3x3-32"``; errors name the item and show the grammar."""
    items = [item.strip().lower().replace(" ", "") for item in re.split(r"[,;]", text)]
    if not text.strip() or any(not item for item in items):
        raise CnnlabError(f"layer spec {text!r} has an empty item; write {GRAMMAR}")
    return [_parse_item(item, index, text, spatial_dims) for index, item in
            enumerate(items, start=1)]


def _parse_item(item: str, index: int, text: str, spatial_dims: int | None) -> SpecLayer:
    def fail(reason: str) -> CnnlabError:
        return CnnlabError(f"layer spec {text!r}, item {index} {item!r}: {reason}. "
                           f"Grammar: {GRAMMAR}")

    if item in _SIMPLE:
        return SpecLayer(item, item)
    match = _FC.match(item)
    if match:
        units = int(match["units"])
        if units < 1:
            raise fail("a fully connected layer needs at least one unit")
        return SpecLayer(item, "fc", channels=units)
    match = _KERNEL_LAYER.match(item)
    if not match:
        raise fail("not a layer this grammar knows")
    kind = match["kind"]
    kernel = tuple(int(k) for k in match["kernel"].split("x"))
    if any(k < 1 for k in kernel):
        raise fail("kernel sizes must be positive")
    channels = int(match["channels"]) if match["channels"] else None
    if kind in ("conv", "tconv") and channels is None:
        raise fail(f"{kind} needs its output channels, e.g. {kind}3x3-16")
    if kind not in ("conv", "tconv") and channels is not None:
        raise fail(f"{kind} takes no channel count (it keeps the input's channels)")
    if channels == 0:
        raise fail("a convolution needs at least one output channel")
    values = _parse_options(match["options"], _OPTIONS[kind], fail)
    dims = spatial_dims or len(kernel)
    if len(kernel) == 1:
        kernel = kernel * dims
    elif spatial_dims is not None and len(kernel) != spatial_dims:
        raise fail(f"{len(kernel)} kernel sizes for an input with {spatial_dims} spatial "
                   "dimensions")
    pooling = kind in ("maxpool", "avgpool")
    if "s" in values:
        stride = (values["s"],) * len(kernel)
    else:
        stride = kernel if pooling else (1,) * len(kernel)
    padding = (values.get("p", 0),) * len(kernel)
    if pooling and any(2 * p > k for p, k in zip(padding, kernel)):
        raise fail("pooling padding must be at most half the kernel")
    dilation = (values.get("d", 1),) * len(kernel)
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation):
        raise fail("stride and dilation must be at least 1")
    return SpecLayer(item, kind, kernel, channels, stride, padding, dilation,
                     values.get("g", 1))


def _parse_options(text: str, allowed: str, fail) -> dict[str, int]:
    values: dict[str, int] = {}
    for group in filter(None, text.split("/")):
        if not re.fullmatch(r"(?:[a-z]\d+)+", group):
            raise fail(f"option {group!r} should be letters with numbers, e.g. s2p1")
        for letter, number in re.findall(r"([a-z])(\d+)", group):
            if letter not in allowed:
                raise fail(f"option {letter!r} is not one of {', '.join(allowed)} here")
            values[letter] = int(number)
    if values.get("g", 1) < 1:
        raise fail("groups must be at least 1")
    return values


# ----------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------

@dataclass
class SpecRow:
    """The arithmetic of one spec layer; counts are ints or sympy expressions."""

    text: str
    type: str
    output_shape: tuple[Any, ...]
    params: Any
    macs: Any
    locally_connected_params: Any
    fully_connected_params: Any
    receptive_field: tuple[Any, ...] | None
    jump: tuple[Any, ...] | None
    start: tuple[Any, ...] | None
    exact: bool = True  # False: the field is an upper bound (after a strided transposed conv)


@dataclass
class SpecResult:
    """Per-layer parameters, fields and MACs of a spec, with the costs without sharing."""

    spec: str
    input_shape: tuple[Any, ...]
    symbols: list[str]
    rows: list[SpecRow] = field(default_factory=list)
    # Sizes after strided layers get names, e.g. "N1 = floor(N/2 - 1/2) + 1", so that
    # the expressions stay readable.
    definitions: list[str] = field(default_factory=list)
    named_sizes: list[tuple[Any, Any]] = field(default_factory=list, repr=False)

    def evaluate(self, value: Any, **sizes: int) -> Any:
        """``value`` with the named sizes expanded and symbols set, e.g. ``N=32``."""
        import sympy

        value = sympy.sympify(value)
        for symbol, expression in reversed(self.named_sizes):
            value = value.subs(symbol, expression)
        values = {sympy.Symbol(k, integer=True, positive=True): v for k, v in sizes.items()}
        return value.subs(values)

    @property
    def total_params(self) -> Any:
        return _simplify(sum(row.params for row in self.rows))

    @property
    def total_macs(self) -> Any:
        return _simplify(sum(row.macs for row in self.rows))

    @property
    def total_locally_connected(self) -> Any:
        return _simplify(sum(row.locally_connected_params for row in self.rows))

    @property
    def total_fully_connected(self) -> Any:
        return _simplify(sum(row.fully_connected_params for row in self.rows))

    def saving(self) -> dict[str, Any]:
        """How many times more parameters the stack needs without weight sharing."""
        import sympy

        shared = self.total_params
        if shared == 0:
            return {"locally_connected": None, "fully_connected": None}
        ratios = {}
        for key, total in (("locally_connected", self.total_locally_connected),
                           ("fully_connected", self.total_fully_connected)):
            ratio = sympy.simplify(sympy.sympify(total) / shared)
            ratios[key] = float(ratio) if ratio.is_number else ratio
        return ratios

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "input_shape": [_plain(v) for v in self.input_shape],
            "symbols": self.symbols,
            "definitions": self.definitions,
            "layers": [
                {"layer": row.text, "type": row.type,
                 "output_shape": [_plain(v) for v in row.output_shape],
                 "params": _plain(row.params), "macs": _plain(row.macs),
                 "locally_connected_params": _plain(row.locally_connected_params),
                 "fully_connected_params": _plain(row.fully_connected_params),
                 "receptive_field": _plain_list(row.receptive_field),
                 "jump": _plain_list(row.jump), "start": _plain_list(row.start),
                 "field_exact": row.exact}
                for row in self.rows],
            "total_params": _plain(self.total_params),
            "total_macs": _plain(self.total_macs),
            "total_locally_connected_params": _plain(self.total_locally_connected),
            "total_fully_connected_params": _plain(self.total_fully_connected),
            "saving": {k: _plain(v) for k, v in self.saving().items()},
        }


def _plain(value: Any) -> Any:
    """ints stay ints, fractions become floats, expressions become text."""
    import sympy

    if value is None or isinstance(value, (int, float, str)):
        return value
    value = sympy.sympify(value)
    if value.is_Integer:
        return int(value)
    if value.is_number:
        return float(value)
    return format_expression(value)


def _plain_list(values: tuple[Any, ...] | None) -> list | None:
    return None if values is None else [_plain(v) for v in values]


def _simplify(value: Any) -> Any:
    import sympy

    value = sympy.sympify(value)
    return int(value) if value.is_Integer else sympy.factor(sympy.expand(value))


def format_expression(value: Any) -> str:
    """``448*(N - 2)**2`` -> ``448*(N - 2)^2``; integers with thousands separators."""
    import sympy

    value = sympy.sympify(value)
    if value.is_Integer:
        return f"{int(value):,}"
    if value.is_Rational:
        return f"{float(value):g}"
    return str(value).replace("**", "^")


def parse_symbolic_shape(text: str | tuple) -> tuple[tuple[Any, ...], list[str]]:
    """``"3xNxN"`` -> ``(3, N, N)`` with sympy symbols for the names."""
    import sympy

    parts = [str(p).strip() for p in (text.lower().replace("*", "x").split("x")
                                      if isinstance(text, str) else text)]
    values: list[Any] = []
    names: list[str] = []
    for part in parts:
        if re.fullmatch(r"\d+", part):
            if int(part) < 1:
                raise CnnlabError(f"--input {text!r}: sizes must be positive")
            values.append(int(part))
        elif re.fullmatch(r"[a-z_][a-z0-9_]*", part):
            name = part.upper() if len(part) == 1 else part
            values.append(sympy.Symbol(name, integer=True, positive=True))
            if name not in names:
                names.append(name)
        else:
            raise CnnlabError(f"--input {text!r}: {part!r} is neither a size nor a name; "
                              "write e.g. 3x32x32 or 3xNxN")
    if len(values) < 1:
        raise CnnlabError(f"--input {text!r} is empty")
    return tuple(values), names


def analyse_spec(spec: str, input_shape: str | tuple) -> SpecResult:
    """Parameters, MACs, receptive fields and costs without sharing of a layer spec.

    >>> result = analyse_spec("conv3x3-16, conv3x3-32", "3xNxN")
    >>> [row.params for row in result.rows], result.total_params
    ([448, 4640], 5088)
    >>> [row.receptive_field for row in result.rows]
    [(3, 3), (5, 5)]
    """
    import sympy

    shape, symbols = parse_symbolic_shape(input_shape)
    channels, sizes = shape[0], list(shape[1:])
    layers = parse_spec(spec, spatial_dims=len(sizes) or None)
    result = SpecResult(spec, shape, symbols)
    # Field recurrence state per spatial dimension; None once the positions are gone.
    field_size = [sympy.Integer(1)] * len(sizes)
    jump: list[Any] | None = [sympy.Integer(1)] * len(sizes)
    centre: list[Any] | None = [sympy.Integer(0)] * len(sizes)
    features: Any = None  # set once flattened: the number of features
    exact = True
    names: dict[Any, Any] = {}  # size expression -> the symbol that stands for it

    for index, layer in enumerate(layers, start=1):
        kind = layer.kind
        params = macs = 0
        local = dense = None
        if kind in ("conv", "dwconv", "tconv", "maxpool", "avgpool"):
            if features is not None:
                raise CnnlabError(f"layer spec item {index} {layer.text!r} needs a spatial "
                                  "input, but an earlier item flattened it")
            out_channels = {"conv": layer.channels, "tconv": layer.channels,
                            "dwconv": channels}.get(kind, channels)
            groups = channels if kind == "dwconv" else layer.groups
            _check_groups(layer, index, channels, out_channels, groups)
            if kind == "tconv":
                out_sizes = [(n - 1) * s - 2 * p + d * (k - 1) + 1 for n, k, s, p, d in
                             zip(sizes, layer.kernel, layer.stride, layer.padding,
                                 layer.dilation)]
            else:
                out_sizes = [sympy.floor((n + 2 * p - d * (k - 1) - 1) / s) + 1
                             for n, k, s, p, d in zip(sizes, layer.kernel, layer.stride,
                                                      layer.padding, layer.dilation)]
            _check_sizes(layer, index, out_sizes, input_shape)
            out_sizes = [_name_size(size, result, names) for size in out_sizes]
            taps = math.prod(layer.kernel)
            positions_in, positions_out = math.prod(sizes), math.prod(out_sizes)
            if kind in ("maxpool", "avgpool"):
                local = dense = 0
            elif kind == "tconv":
                weights = channels * (out_channels // groups if isinstance(out_channels, int)
                                      else out_channels / groups) * taps
                params = weights + out_channels
                macs = positions_in * weights
                local = positions_in * weights + positions_out * out_channels
                dense = (channels * positions_in + 1) * out_channels * positions_out
            else:
                fan_in = channels * taps / groups if not isinstance(channels, int) \
                    else channels // groups * taps
                params = out_channels * (fan_in + 1)
                macs = out_channels * positions_out * fan_in
                local = positions_out * params  # one kernel and bias per output position
                dense = (channels * positions_in + 1) * out_channels * positions_out
            field_size, jump, centre = _grow(field_size, jump, centre, layer)
            exact = exact and not (kind == "tconv" and any(s > 1 for s in layer.stride))
            channels, sizes = out_channels, out_sizes
            shape_out = (channels, *sizes)
            type_name = {"conv": "conv", "dwconv": "depthwise conv", "tconv": "transposed conv",
                         "maxpool": "max pool", "avgpool": "average pool"}[kind]
        elif kind == "gap":
            if features is not None:
                raise CnnlabError(f"layer spec item {index} 'gap' needs a spatial input")
            field_size = [r + (n - 1) * j for r, n, j in zip(field_size, sizes, jump)]
            jump, centre = None, None
            sizes = [1] * len(sizes)
            shape_out, type_name = (channels, *sizes), "global average pool"
            local = dense = 0
        elif kind in ("fc", "flatten"):
            if features is None:
                if jump is not None:
                    field_size = [r + (n - 1) * j for r, n, j in zip(field_size, sizes, jump)]
                jump, centre = None, None
                features = channels * math.prod(sizes)
            if kind == "fc":
                params = (features + 1) * layer.channels
                macs = features * layer.channels
                features = layer.channels
            local = dense = params
            shape_out, type_name = (features,), "fully connected" if kind == "fc" else "flatten"
        elif kind == "bn":
            params = 2 * (channels if features is None else features)
            local = dense = params
            shape_out = (channels, *sizes) if features is None else (features,)
            type_name = "batch norm"
        else:
            local = dense = 0
            shape_out = (channels, *sizes) if features is None else (features,)
            type_name = kind
        result.rows.append(SpecRow(
            text=layer.text, type=type_name, output_shape=tuple(_tidy(v) for v in shape_out),
            params=_simplify(params), macs=_simplify(macs),
            locally_connected_params=_simplify(local), fully_connected_params=_simplify(dense),
            receptive_field=tuple(_tidy(v) for v in field_size) if sizes or features else None,
            jump=None if jump is None else tuple(_tidy(v) for v in jump),
            start=None if centre is None else tuple(_tidy(v) for v in centre),
            exact=exact,
        ))
    return result


def _name_size(size: Any, result: SpecResult, names: dict[Any, Any]) -> Any:
    """A new symbol for a size that has a floor in it (``N1`` for ``floor(N/2 - 1/2) + 1``)."""
    import sympy

    size = sympy.sympify(size)
    if size.is_number or not size.has(sympy.floor):
        return size
    if size not in names:
        root = re.sub(r"\d+$", "", str(min(size.free_symbols, key=str)))
        taken = set(result.symbols) | {str(symbol) for symbol in names.values()}
        number = 1
        while f"{root}{number}" in taken:
            number += 1
        symbol = sympy.Symbol(f"{root}{number}", integer=True, positive=True)
        names[size] = symbol
        result.named_sizes.append((symbol, size))
        result.definitions.append(f"{symbol} = {format_expression(size)}")
    return names[size]


def _grow(field_size: list, jump: list | None, centre: list | None,
          layer: SpecLayer) -> tuple[list, list | None, list | None]:
    import sympy

    if jump is None:
        return field_size, jump, centre
    new_size, new_jump, new_centre = [], [], []
    for r, j, c, k, s, p, d in zip(field_size, jump, centre, layer.kernel, layer.stride,
                                   layer.padding, layer.dilation):
        reach = d * (k - 1)
        if layer.kind == "tconv":
            # A bound: output units read at most ceil(reach / s) + 1 input units.
            new_size.append(r + sympy.Rational(reach, s) * j)
            new_jump.append(j / s)
            new_centre.append(c + (p - sympy.Rational(reach, 2)) * j / s)
        else:
            new_size.append(r + reach * j)
            new_jump.append(j * s)
            new_centre.append(c + (sympy.Rational(reach, 2) - p) * j)
    return new_size, new_jump, new_centre


def _check_groups(layer: SpecLayer, index: int, channels: Any, out_channels: Any,
                  groups: int) -> None:
    if groups == 1 or not isinstance(channels, int):
        return
    if channels % groups or (isinstance(out_channels, int) and out_channels % groups):
        raise CnnlabError(f"layer spec item {index} {layer.text!r}: groups={groups} must divide "
                          f"both input channels ({channels}) and output channels "
                          f"({out_channels})")


def _check_sizes(layer: SpecLayer, index: int, sizes: list, input_shape: Any) -> None:
    for size in sizes:
        if getattr(size, "is_number", isinstance(size, int)) and int(size) < 1:
            shown = input_shape if isinstance(input_shape, str) else "x".join(map(str,
                                                                                   input_shape))
            raise CnnlabError(
                f"layer spec item {index} {layer.text!r} leaves no output positions "
                f"(size {int(size)}) for input {shown}; use a larger input, padding or a "
                "smaller stride")


def _tidy(value: Any) -> Any:
    import sympy

    value = sympy.sympify(value)
    if value.is_Integer:
        return int(value)
    return value


# ----------------------------------------------------------------------------
# The spec as a real network
# ----------------------------------------------------------------------------

def build_spec_model(spec: str, input_shape: str | tuple) -> Any:
    """The spec as a ``torch.nn.Sequential`` for a concrete input shape (e.g. 3x32x32)."""
    from torch import nn

    from cnnlab.inspect._analyse import parse_input_shape

    shape = parse_input_shape(input_shape)
    dims = len(shape) - 1
    if dims not in (1, 2, 3):
        raise CnnlabError(f"a layer spec needs 1 to 3 spatial dimensions, got input {shape}")
    layers = parse_spec(spec, spatial_dims=dims)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    transposed = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    max_pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    avg_pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims]
    batch_norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    adaptive = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    activations = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
                   "silu": nn.SiLU, "dropout": nn.Dropout}

    modules: list[nn.Module] = []
    analysis = analyse_spec(spec, input_shape)
    previous: tuple[int, ...] = shape
    for layer, row in zip(layers, analysis.rows):
        kind, channels = layer.kind, previous[0]
        if kind == "conv":
            modules.append(conv(channels, layer.channels, layer.kernel, layer.stride,
                                layer.padding, layer.dilation, layer.groups))
        elif kind == "dwconv":
            modules.append(conv(channels, channels, layer.kernel, layer.stride, layer.padding,
                                layer.dilation, groups=channels))
        elif kind == "tconv":
            modules.append(transposed(channels, layer.channels, layer.kernel, layer.stride,
                                      layer.padding, groups=layer.groups,
                                      dilation=layer.dilation))
        elif kind == "maxpool":
            modules.append(max_pool(layer.kernel, layer.stride, layer.padding, layer.dilation))
        elif kind == "avgpool":
            modules.append(avg_pool(layer.kernel, layer.stride, layer.padding))
        elif kind == "gap":
            modules.append(adaptive(1))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        elif kind == "fc":
            if len(previous) > 1:
                modules.append(nn.Flatten())
            modules.append(nn.Linear(math.prod(previous), layer.channels))
        elif kind == "bn":
            modules.append(nn.BatchNorm1d(channels) if len(previous) == 1
                           else batch_norm(channels))
        else:
            modules.append(activations[kind]())
        previous = tuple(int(size) for size in row.output_shape)
    return nn.Sequential(*modules)
