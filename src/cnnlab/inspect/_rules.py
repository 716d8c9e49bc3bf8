"""How each operation moves receptive fields, and what it costs in multiply-adds.

An operation is seen as a :class:`Call`: its name (a module class or a
normalised function name such as ``conv2d`` or ``add``), its concrete
arguments and output (tensors from a real or meta run) and, parallel to the
arguments, the :class:`Field` of every tensor argument. :func:`apply` returns
the output's field and what the layer table needs (a row or not, a note,
MACs). Anything without a rule gets an unknown field that names it, so no
operation is ever skipped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlab.inspect._field import (
    Span,
    adaptive_window,
    broadcast,
    collapse,
    resample,
    transposed_window,
    union,
    window,
)


@dataclass(frozen=True)
class Field:
    """Which input pixels each element of a tensor depends on.

    ``spans`` has one :class:`Span` per spatial input dimension. A field with
    no spans and no ``unknown`` reason is constant: it depends on no input
    pixel (parameters, buffers, tensors built inside ``forward``).
    """

    spans: tuple[Span, ...] | None = None
    unknown: str = ""

    @property
    def constant(self) -> bool:
        return self.spans is None and not self.unknown


CONSTANT = Field()


@dataclass
class Call:
    """One executed operation, with its inputs' fields beside its arguments."""

    op: str
    module: nn.Module | None
    args: tuple
    kwargs: dict
    arg_fields: tuple
    kwarg_fields: dict
    output: Any

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)

    def operands(self) -> list[tuple[torch.Tensor, Field]]:
        """Every tensor argument with its field, in argument order."""
        pairs: list[tuple[torch.Tensor, Field]] = []
        _collect(self.args, self.arg_fields, pairs)
        _collect(tuple(self.kwargs.values()),
                 tuple(self.kwarg_fields.get(k) for k in self.kwargs), pairs)
        return pairs


@dataclass
class Outcome:
    field: Any  # a Field, a tuple of them for tuple outputs, or None
    row: bool = False
    note: str = ""
    macs: int | None = 0


@dataclass
class _Geometry:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    bound_reason: str = ""
    extra: dict = field(default_factory=dict)


def _collect(values: Any, fields: Any, pairs: list) -> None:
    if isinstance(values, torch.Tensor):
        pairs.append((values, fields if isinstance(fields, Field) else CONSTANT))
    elif isinstance(values, (tuple, list)):
        field_items = fields if isinstance(fields, (tuple, list)) else [fields] * len(values)
        for value, value_field in zip(values, field_items):
            _collect(value, value_field, pairs)


def _tuple(value: Any, count: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        values = tuple(int(v) for v in value)
        return values * count if len(values) == 1 else values
    return (int(value),) * count


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _like_output(output: Any, result: Field) -> Any:
    """The same field for every tensor of a (possibly tuple) output."""
    if isinstance(output, torch.Tensor):
        return result
    if isinstance(output, (tuple, list)):
        return tuple(_like_output(item, result) for item in output)
    return None


def _single(call: Call) -> tuple[torch.Tensor, Field]:
    return call.operands()[0]


# ----------------------------------------------------------------------------
# Operation names
# ----------------------------------------------------------------------------

_ELEMENTWISE = {
    # activations
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
    "tanh", "hardswish", "hardsigmoid", "hardtanh", "softplus", "softsign", "tanhshrink",
    "threshold", "logsigmoid", "hardshrink", "softshrink", "prelu", "rrelu",
    # regularisation that is the identity at inference time
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "stochastic_depth",
    # arithmetic (any number of tensor operands, broadcast)
    "add", "sub", "mul", "div", "truediv", "floordiv", "true_divide", "pow", "neg", "pos", "abs",
    "exp", "log", "log2", "log1p", "sqrt", "rsqrt", "square", "reciprocal", "sign", "sin", "cos",
    "erf", "floor", "ceil", "round", "clamp", "clip", "clamp_min", "clamp_max", "maximum",
    "minimum", "where", "lerp", "addcmul", "addcdiv", "mod", "remainder", "rsub", "radd",
    "iadd", "isub", "imul", "idiv", "itruediv", "and", "or", "xor", "invert", "eq", "ne",
    "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "masked_fill",
    "nan_to_num", "expand", "expand_as", "broadcast_to",
    # dtype, memory layout and autograd bookkeeping
    "contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as", "clone",
    "detach", "requires_grad_", "cpu", "cuda", "real", "imag", "data", "long", "int", "bool",
    "short", "byte", "char",
    # normalisation applied per position
    "batch_norm",
}

# One tensor in, the same shape out, no parameters: safe to skip on meta tensors.
UNARY_ACTIVATIONS = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
    "tanh", "hardswish", "hardsigmoid", "hardtanh", "softplus", "softsign", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "stochastic_depth",
}

# New tensors that take only a shape, dtype or device from their input: they depend on
# no pixel value.
_CONSTANT_MAKERS = {"new_full", "new_zeros", "new_ones", "new_empty", "new_tensor", "zeros_like",
                    "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "zero",
                    "fill"}

_STATISTICS_NORMS = {"layer_norm", "group_norm", "instance_norm", "local_response_norm"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp",
               "norm", "argmax", "argmin", "all", "any", "nansum", "nanmean", "median"}
_SOFTMAX = {"softmax", "log_softmax", "softmin"}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
             "reshape_as"}
_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T",
             "mT"}
_NON_TENSOR = {"size", "dim", "numel", "getattr", "__get__", "shape", "ndimension", "nelement"}
_MATMUL = {"matmul", "mm", "bmm"}

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink,
    nn.Softshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.modules.batchnorm._BatchNorm,
    nn.ChannelShuffle,
)
_STATISTICS_MODULES: tuple[type, ...] = (
    nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
)


def op_name(target: Any) -> str:
    """A normalised name for a function or method: ``operator.iadd`` and ``Tensor.add_`` -> add."""
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    if name == "__get__" and hasattr(target, "__self__"):
        name = getattr(target.__self__, "__name__", name)  # a property: Tensor.T, Tensor.real
    if name.startswith("__") and name.endswith("__") and name != "__get__":
        name = name[2:-2]
        if name.startswith("r") and name[1:] in ("add", "sub", "mul", "truediv", "pow", "and",
                                                 "or", "xor", "floordiv", "matmul", "mod"):
            name = name[1:]
        if name in ("iadd", "isub", "imul", "itruediv", "ifloordiv", "iand", "ior"):
            name = name[1:]
    elif name.endswith("_") and not name.startswith("_") and name != "requires_grad_":
        name = name[:-1]  # in-place variant
    return name


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------

def apply(call: Call) -> Outcome:
    """The field of ``call.output`` and the layer-table facts for one operation."""
    output = call.output
    if _first_tensor(output) is None:
        return Outcome(None)
    operands = call.operands()
    if not operands or all(f.constant for _, f in operands):
        # Built from parameters or constants only: depends on no input pixel,
        # whatever the operation is. A module still gets its row.
        return Outcome(_like_output(output, CONSTANT), row=call.module is not None,
                       macs=_macs(call))
    if call.op == "getitem" and not isinstance(call.args[0], torch.Tensor):
        return _getitem(call)  # picks one output of a tuple; the others do not matter
    unknown = next((f for _, f in operands if f.unknown), None)
    if unknown is not None:
        # Run the rule on field-less stand-ins to learn the row and MACs; the
        # field stays unknown, naming the operation where analysis stopped.
        shadow = Call(call.op, call.module, call.args, call.kwargs,
                      _without_unknown(call.arg_fields), _without_unknown(call.kwarg_fields),
                      call.output)
        outcome = _dispatch(shadow)
        outcome.field = _like_output(output, Field(unknown=unknown.unknown))
        if outcome.note.startswith("not analysed"):
            outcome.note = ""
        return outcome
    return _dispatch(call)


def _without_unknown(fields: Any) -> Any:
    if isinstance(fields, Field):
        return Field(spans=()) if fields.unknown else fields
    if isinstance(fields, dict):
        return {key: _without_unknown(value) for key, value in fields.items()}
    if isinstance(fields, (tuple, list)):
        return type(fields)(_without_unknown(value) for value in fields)
    return fields


def _dispatch(call: Call) -> Outcome:
    if call.module is not None:
        return _module_rule(call)
    name = call.op
    if name in _ELEMENTWISE or name == "copy":
        return _elementwise(call)
    if name in _CONSTANT_MAKERS:
        return Outcome(_like_output(call.output, CONSTANT))
    if name in _STATISTICS_NORMS:
        outcome = _elementwise(call)
        outcome.note = _statistics_note(name)
        return outcome
    if name in ("conv1d", "conv2d", "conv3d"):
        weight = call.arg(1, "weight")
        dims = weight.ndim - 2
        geometry = _Geometry(tuple(weight.shape[2:]), _tuple(call.arg(3, "stride", 1), dims),
                             (), _tuple(call.arg(5, "dilation", 1), dims))
        geometry.padding = _conv_padding(call.arg(4, "padding", 0), geometry)
        return _sliding(call, geometry, macs=_conv_macs(call.output, weight), mix_channels=True)
    if name.startswith("conv_transpose"):
        weight = call.arg(1, "weight")
        dims = weight.ndim - 2
        geometry = _Geometry(tuple(weight.shape[2:]), _tuple(call.arg(3, "stride", 1), dims),
                             _tuple(call.arg(4, "padding", 0), dims),
                             _tuple(call.arg(7, "dilation", 1), dims))
        tensor, _ = _single(call)
        return _sliding(call, geometry, transposed=True,
                        macs=_transposed_macs(tensor, weight), mix_channels=True)
    if name in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
                "avg_pool3d", "lp_pool1d", "lp_pool2d", "lp_pool3d"):
        return _functional_pool(call, name)
    if name.startswith("adaptive_"):
        return _adaptive(call)
    if name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
        mode = call.arg(3, "mode", "nearest")
        if name == "upsample_bilinear":
            mode = "bilinear"
        return _resample(call, mode, bool(call.arg(4, "align_corners", False)))
    if name == "pad":
        return _pad(call, call.arg(1, "pad"), call.arg(2, "mode", "constant"))
    if name == "linear":
        return _linear(call, call.arg(1, "weight"))
    if name == "embedding":
        return _elementwise_keep(call)
    if name in _RESHAPES:
        return _reshape(call)
    if name in _PERMUTES:
        return _permute(call)
    if name in ("cat", "concat", "concatenate", "stack"):
        return _concatenate(call, stack=name == "stack")
    if name in _REDUCTIONS:
        second = call.arg(1, "other")
        if isinstance(second, torch.Tensor):
            return _elementwise(call)  # torch.max(a, b) is elementwise
        return _reduce(call)
    if name in _SOFTMAX:
        return _softmax(call, call.arg(1, "dim"))
    if name == "getitem":
        return _getitem(call)
    if name in ("chunk", "split", "unbind", "tensor_split"):
        return _split(call)
    if name in _MATMUL:
        first, second = call.args[0], call.args[1]
        macs = call.output.numel() * first.shape[-1] if first.ndim >= 1 else None
        return _unknown(call, name, macs=macs)
    return _unknown(call, name, macs=None)


def _unknown(call: Call, name: str, macs: int | None = None) -> Outcome:
    reason = f"{name} is not analysed"
    return Outcome(_like_output(call.output, Field(unknown=reason)), row=True,
                   note=f"not analysed: {name} has no receptive-field rule; fields after it "
                   "are unknown", macs=macs)


def _statistics_note(name: str) -> str:
    return (f"{name}: statistics pooled over positions are ignored (strictly, every unit "
            "then sees the whole input)")


# ----------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------

def _module_rule(call: Call) -> Outcome:
    module = call.module
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        geometry = _Geometry(module.kernel_size, module.stride,
                             _tuple(module.padding, len(module.kernel_size)), module.dilation)
        tensor, _ = _single(call)
        return _sliding(call, geometry, transposed=True,
                        macs=_transposed_macs(tensor, module.weight), mix_channels=True)
    if isinstance(module, nn.modules.conv._ConvNd):
        geometry = _Geometry(module.kernel_size, module.stride, (), module.dilation)
        geometry.padding = _conv_padding(module.padding, geometry)
        if module.padding_mode != "zeros":
            geometry.bound_reason = (f"padding_mode {module.padding_mode!r} reads border "
                                     "pixels again; the box is a bound")
        return _sliding(call, geometry, macs=_conv_macs(call.output, module.weight),
                        mix_channels=True)
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                           nn.modules.pooling._LPPoolNd)):
        tensor, _ = _single(call)
        dims = _pool_dims(module, tensor)
        kernel = _tuple(module.kernel_size, dims)
        stride = _tuple(module.stride if module.stride else module.kernel_size, dims)
        padding = _tuple(getattr(module, "padding", 0), dims)
        dilation = _tuple(getattr(module, "dilation", 1), dims)
        return _sliding(call, _Geometry(kernel, stride, padding, dilation))
    if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd,
                           nn.modules.pooling._AdaptiveMaxPoolNd)):
        return _adaptive(call)
    if isinstance(module, nn.Linear):
        return _linear(call, module.weight)
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        return _reshape(call)
    if isinstance(module, nn.Upsample):
        return _resample(call, module.mode, bool(module.align_corners))
    if isinstance(module, (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
                           nn.modules.padding._ReplicationPadNd)):
        mode = "constant" if isinstance(module, nn.modules.padding._ConstantPadNd) else "reflect"
        return _pad(call, module.padding, mode, row=True)
    if isinstance(module, nn.Embedding):
        return _elementwise_keep(call, row=True)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return _softmax(call, module.dim, row=True)
    if isinstance(module, _STATISTICS_MODULES):
        outcome = _elementwise(call, row=True)
        outcome.note = _statistics_note(type(module).__name__)
        return outcome
    if isinstance(module, _ELEMENTWISE_MODULES):
        return _elementwise(call, row=True)
    return _unknown(call, type(module).__name__, macs=None)


def _pool_dims(module: nn.Module, tensor: torch.Tensor) -> int:
    name = type(module).__name__
    for dims in (1, 2, 3):
        if name.endswith(f"{dims}d"):
            return dims
    return tensor.ndim - 2


def _conv_padding(padding: Any, geometry: _Geometry) -> tuple[int, ...]:
    """Left padding per axis; PyTorch's ``"same"`` puts the odd pixel on the right."""
    dims = len(geometry.kernel)
    if padding == "valid":
        return (0,) * dims
    if padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(geometry.kernel, geometry.dilation))
    return _tuple(padding, dims)


# ----------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------

def _sliding(call: Call, geometry: _Geometry, transposed: bool = False, macs: int | None = 0,
             mix_channels: bool = False) -> Outcome:
    """Convolution or pooling over the last ``len(kernel)`` axes of the first operand."""
    tensor, source = _single(call)
    dims = len(geometry.kernel)
    first_axis = tensor.ndim - dims
    spans = []
    for span in source.spans:
        if span.axis is not None and span.axis >= first_axis:
            index = span.axis - first_axis
            move = transposed_window if transposed else window
            span = move(span, geometry.kernel[index], geometry.stride[index],
                        geometry.padding[index], geometry.dilation[index])
            if geometry.bound_reason:
                span = span.replace(exact=False)
        elif mix_channels and span.axis == first_axis - 1:
            span = collapse(span, tensor.shape[span.axis], keep_axis=True)
        spans.append(span)
    note = geometry.bound_reason
    if transposed and any(s > 1 for s in geometry.stride):
        note = "transposed stride > 1: which inputs a unit reads depends on its position; " \
               "the box is a bound"
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=True, note=note,
                   macs=macs)


def _functional_pool(call: Call, name: str) -> Outcome:
    dims = int(name[-2])
    offset = 1 if name.startswith("lp_pool") else 0  # lp_pool takes norm_type first
    kernel = _tuple(call.arg(1 + offset, "kernel_size"), dims)
    stride_value = call.arg(2 + offset, "stride")
    stride = _tuple(stride_value if stride_value else kernel, dims)
    padding = (0,) * dims if offset else _tuple(call.arg(3, "padding", 0), dims)
    dilation = _tuple(call.arg(4, "dilation", 1), dims) if name.startswith("max") else (1,) * dims
    return _sliding(call, _Geometry(kernel, stride, padding, dilation))


def _adaptive(call: Call) -> Outcome:
    tensor, source = _single(call)
    output = _first_tensor(call.output)
    dims = tensor.ndim - 2 if tensor.ndim > 2 else 1
    first_axis = tensor.ndim - dims
    spans = []
    inexact = False
    for span in source.spans:
        if span.axis is not None and span.axis >= first_axis:
            size_in, size_out = tensor.shape[span.axis], output.shape[span.axis]
            span = adaptive_window(span, size_in, size_out)
            inexact = inexact or size_in % size_out != 0
        spans.append(span)
    inexact = inexact and not all(span.exact for span in spans)
    note = "input size is not a multiple of the output size: the box is a bound" if inexact else ""
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=True, note=note)


def _resample(call: Call, mode: str, align_corners: bool) -> Outcome:
    tensor, source = _single(call)
    output = _first_tensor(call.output)
    if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic",
                    "area"):
        return _unknown(call, f"interpolate(mode={mode})")
    dims = tensor.ndim - 2
    first_axis = tensor.ndim - dims
    spans = []
    for span in source.spans:
        if span.axis is not None and span.axis >= first_axis:
            size_in, size_out = tensor.shape[span.axis], output.shape[span.axis]
            if mode == "area":
                span = adaptive_window(span, size_in, size_out)
            else:
                span = resample(span, size_in, size_out, mode, align_corners)
        spans.append(span)
    note = "" if all(span.exact for span in spans) else (
        f"{mode} interpolation: which inputs a unit reads depends on its position; the box "
        "is a bound")
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=True, note=note)


def _pad(call: Call, pad: Any, mode: str, row: bool = True) -> Outcome:
    tensor, source = _single(call)
    pad = tuple(int(p) for p in pad)  # (left, right) pairs, last axis first
    left_by_axis = {tensor.ndim - 1 - i: pad[2 * i] for i in range(len(pad) // 2)}
    spans = []
    for span in source.spans:
        if span.axis in left_by_axis:
            span = window(span, 1, 1, left_by_axis[span.axis])
            if mode != "constant":
                span = span.replace(exact=False)
        spans.append(span)
    note = f"{mode} padding reads border pixels again; the box is a bound" \
        if mode != "constant" else ""
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=row, note=note)


def _linear(call: Call, weight: torch.Tensor) -> Outcome:
    tensor, source = _single(call)
    last = tensor.ndim - 1
    spans = tuple(collapse(s, tensor.shape[last]) if s.axis == last else s
                  for s in source.spans)
    macs = call.output.numel() * int(weight.shape[1])
    return Outcome(Field(spans), row=True, macs=macs)


def _elementwise(call: Call, row: bool = False) -> Outcome:
    """Operands broadcast against each other; a unit sees the union of what they see."""
    output = _first_tensor(call.output)
    merged: list[Span] | None = None
    live_operands = 0
    for tensor, source in call.operands():
        if source.constant:
            continue
        live_operands += 1
        shift = output.ndim - tensor.ndim
        spans = []
        for span in source.spans:
            if span.axis is not None:
                axis = span.axis + shift
                if tensor.shape[span.axis] == 1 and output.shape[axis] != 1:
                    span = broadcast(span).replace(step=None, centre=None)
                span = span.replace(axis=axis)
            spans.append(span)
        merged = spans if merged is None else [
            _merge(a, b, output.shape) for a, b in zip(merged, spans)]
    result = CONSTANT if merged is None else Field(tuple(merged))
    # A sum of two or more inputs is where paths meet (a residual add, a gate):
    # those get their own row; a ReLU on one input does not.
    return Outcome(_like_output(call.output, result), row=row or live_operands > 1)


def _elementwise_keep(call: Call, row: bool = False) -> Outcome:
    """Per-position lookups that append axes (embedding): fields stay on their axes."""
    _, source = _single(call)
    return Outcome(_like_output(call.output, source), row=row)


def _merge(first: Span, second: Span, shape: torch.Size) -> Span:
    if first.axis is None and second.axis is not None:
        first, second = second, first
    if first.step is None and second.step is not None and second.axis == first.axis:
        first, second = second, first  # keep the position of the path that has one
    if first.axis is None:
        return union(first, second, 1)
    if second.axis is None or second.axis == first.axis:
        return union(first, second.replace(axis=first.axis), shape[first.axis])
    # The same input dimension runs along two different axes: only the union of
    # everything both operands see is safe.
    first = collapse(first, shape[first.axis])
    second = collapse(second, shape[second.axis])
    return union(first, second, 1).replace(exact=False)


def _concatenate(call: Call, stack: bool) -> Outcome:
    output = call.output
    dim = call.arg(1, "dim", 0)
    dim = dim + output.ndim if dim < 0 else dim
    merged: list[Span] | None = None
    for tensor, source in call.operands():
        if source.constant:
            continue
        spans = []
        for span in source.spans:
            if span.axis is not None:
                if stack and span.axis >= dim:
                    span = span.replace(axis=span.axis + 1)
                elif not stack and span.axis == dim and not span.flat:
                    return _unknown(call, "concatenation along a spatial axis")
                # Joining flattened positions with other tokens (a class token) keeps
                # the union: every element still comes from one of the inputs.
            spans.append(span)
        merged = spans if merged is None else [
            _merge(a, b, output.shape) for a, b in zip(merged, spans)]
    result = CONSTANT if merged is None else Field(tuple(merged))
    return Outcome(result, row=True)


def _reshape(call: Call) -> Outcome:
    """Reshapes keep the axes they do not touch; positions merged into one axis become flat."""
    tensor, source = _single(call)
    output = _first_tensor(call.output)
    shape_in, shape_out = tuple(tensor.shape), tuple(output.shape)
    prefix = 0
    while prefix < min(len(shape_in), len(shape_out)) and shape_in[prefix] == shape_out[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < min(len(shape_in), len(shape_out)) - prefix
           and shape_in[-1 - suffix] == shape_out[-1 - suffix]):
        suffix += 1
    changed_in = range(prefix, len(shape_in) - suffix)
    changed_out = range(prefix, len(shape_out) - suffix)
    splits = len(changed_out) > 1
    spans = []
    merged_any = False
    for span in source.spans:
        if span.axis is None or span.axis < prefix:
            spans.append(span)
        elif span.axis not in changed_in:
            spans.append(span.replace(axis=span.axis + len(shape_out) - len(shape_in)))
        elif len(changed_out) == 0:
            spans.append(collapse(span, shape_in[span.axis]))  # a size-1 axis squeezed away
        else:
            merged = collapse(span, shape_in[span.axis], flat=True).replace(axis=prefix)
            if splits:
                merged = merged.replace(exact=False)
            merged_any = merged_any or merged.flat
            spans.append(merged)
    note = ("positions flattened into one axis: each element keeps its own field; the box "
            "shown is their union") if merged_any else ""
    structural = merged_any or len(shape_out) < len(shape_in) - 1
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=structural
                   or call.module is not None, note=note)


def _permute(call: Call) -> Outcome:
    tensor, source = _single(call)
    ndim = tensor.ndim
    order = list(range(ndim))
    name = call.op
    if name == "permute":
        dims = call.args[1:] if len(call.args) > 2 else call.arg(1, "dims")
        if isinstance(dims, int):
            dims = [dims]
        order = [d % ndim for d in dims]
    elif name in ("transpose", "swapaxes", "swapdims", "t", "mT"):
        first, second = {"t": (0, 1), "mT": (-2, -1)}.get(
            name, (call.arg(1, "dim0", 0), call.arg(2, "dim1", 1)))
        first, second = first % ndim, second % ndim
        order[first], order[second] = order[second], order[first]
    elif name == "T":
        order = list(reversed(order))
    else:  # movedim
        source_dims = _tuple(call.arg(1, "source"), 1)
        target_dims = _tuple(call.arg(2, "destination"), 1)
        moved = [d % ndim for d in source_dims]
        rest = [d for d in range(ndim) if d not in moved]
        order = [None] * ndim
        for src, dst in zip(moved, (d % ndim for d in target_dims)):
            order[dst] = src
        fill = iter(rest)
        order = [o if o is not None else next(fill) for o in order]
    spans = tuple(s if s.axis is None else s.replace(axis=order.index(s.axis))
                  for s in source.spans)
    return Outcome(_like_output(call.output, Field(spans)))


def _reduce(call: Call) -> Outcome:
    tensor, source = _single(call)
    dim = call.arg(1, "dim", None)
    if dim is None:
        dim = call.kwargs.get("axis")
    keepdim = bool(call.arg(2, "keepdim", False))
    ndim = max(tensor.ndim, 1)
    dims = set(range(tensor.ndim)) if dim is None else {d % ndim for d in _tuple(dim, 1)}
    spans = []
    for span in source.spans:
        if span.axis is None:
            spans.append(span)
        elif span.axis in dims:
            reduced = collapse(span, tensor.shape[span.axis], keep_axis=keepdim)
            spans.append(reduced.replace(step=None, centre=None))
        else:
            shift = 0 if keepdim else sum(1 for d in dims if d < span.axis)
            spans.append(span.replace(axis=span.axis - shift))
    touches_position = any(s.axis in dims for s in source.spans if s.axis is not None)
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=touches_position)


def _softmax(call: Call, dim: int | None, row: bool = False) -> Outcome:
    tensor, source = _single(call)
    if dim is None:
        return _unknown(call, "softmax without dim")
    dim = dim % tensor.ndim
    spans = tuple(collapse(s, tensor.shape[dim], keep_axis=True) if s.axis == dim else s
                  for s in source.spans)
    return Outcome(Field(spans), row=row or any(s.axis == dim for s in source.spans))


def _getitem(call: Call) -> Outcome:
    container, index = call.args[0], call.args[1]
    container_field = call.arg_fields[0]
    if not isinstance(container, torch.Tensor):
        if isinstance(container_field, (tuple, list)) and isinstance(index, int):
            return Outcome(container_field[index])
        if isinstance(container_field, (tuple, list)) and isinstance(index, slice):
            return Outcome(tuple(container_field[index]))
        return Outcome(container_field if isinstance(container_field, Field) else CONSTANT)
    return _index_tensor(call, container, container_field, index)


def _index_tensor(call: Call, tensor: torch.Tensor, source: Field, index: Any) -> Outcome:
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in items):
        return _unknown(call, "indexing with a tensor")
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for item in items:
        if item is Ellipsis:
            expanded += [slice(None)] * (tensor.ndim - explicit)
        else:
            expanded.append(item)
    expanded += [slice(None)] * (tensor.ndim - sum(1 for i in expanded if i is not None))
    # Map each input axis to its output axis (None when an integer removed it).
    axis_map: dict[int, int | None] = {}
    kept: dict[int, Any] = {}
    input_axis = output_axis = 0
    for item in expanded:
        if item is None:
            output_axis += 1
            continue
        if isinstance(item, int):
            axis_map[input_axis] = None
        else:
            axis_map[input_axis] = output_axis
            output_axis += 1
        kept[input_axis] = item
        input_axis += 1
    spans = []
    for span in source.spans:
        if span.axis is None:
            spans.append(span)
            continue
        item = kept[span.axis]
        size = tensor.shape[span.axis]
        if isinstance(item, int):
            position = item % size
            moved = window(span, 1, 1, -position)
            spans.append(collapse(moved, 1))
            continue
        start, _, step = item.indices(size)
        if step < 1:
            return _unknown(call, "indexing with a negative step")
        spans.append(window(span, 1, step, -start).replace(axis=axis_map[span.axis]))
    changes_position = any(
        s.axis is not None and kept[s.axis] != slice(None) for s in source.spans)
    return Outcome(_like_output(call.output, Field(tuple(spans))), row=changes_position)


def _split(call: Call) -> Outcome:
    tensor, source = _single(call)
    name = call.op
    dim = call.arg(2 if name != "unbind" else 1, "dim", 0) % tensor.ndim
    if any(s.axis == dim for s in source.spans):
        return _unknown(call, f"{name} along a spatial axis")
    spans = source.spans
    if name == "unbind":
        spans = tuple(s if s.axis is None or s.axis < dim else s.replace(axis=s.axis - 1)
                      for s in spans)
    return Outcome(_like_output(call.output, Field(spans)))


# ----------------------------------------------------------------------------
# Multiply-accumulate counts (one sample; bias additions are not MACs)
# ----------------------------------------------------------------------------

def _conv_macs(output: torch.Tensor, weight: torch.Tensor) -> int:
    # Each output value is a dot product over (in_channels / groups) x kernel taps.
    return output.numel() * int(weight.shape[1]) * math.prod(weight.shape[2:])


def _transposed_macs(tensor: torch.Tensor, weight: torch.Tensor) -> int:
    # Each input value is scattered to (out_channels / groups) x kernel taps.
    return tensor.numel() * int(weight.shape[1]) * math.prod(weight.shape[2:])


def _macs(call: Call) -> int | None:
    module = call.module
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _transposed_macs(_single(call)[0], module.weight)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_macs(call.output, module.weight)
    if isinstance(module, nn.Linear):
        return call.output.numel() * module.in_features
    return 0

