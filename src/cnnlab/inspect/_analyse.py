"""Walk a model's graph once, at one input size, and fill the layer table.

Two front ends feed the same rules (:mod:`cnnlab.inspect._rules`):

- ``torch.fx``: the symbolically traced graph, executed node by node. Leaf
  modules (those of ``torch.nn``) become rows; functional operations inside
  other modules are seen one by one.
- ``run``: one forward pass recorded with a ``TorchFunctionMode`` and module
  hooks, used when tracing fails (data-dependent control flow, unsupported
  Python). It sees every torch operation the input actually runs, so fields
  are exact for the branch that input takes.

Shapes come from a pass on the ``meta`` device (no memory, no arithmetic);
if an operation does not support meta tensors the pass is repeated for real
on the model's device, without gradients.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from cnnlab._util import CnnlabError
from cnnlab.inspect import _rules
from cnnlab.inspect._field import input_span
from cnnlab.inspect._result import InspectResult, LayerRow
from cnnlab.inspect._rules import CONSTANT, Call, Field

log = logging.getLogger(__name__)

TRACES = ("auto", "fx", "run")


class _Rejected(Exception):
    """The model raised while running: ``where`` names the layer, ``detail`` what it expected."""

    def __init__(self, where: str, error: BaseException, detail: str = "") -> None:
        super().__init__(where)
        self.where = where
        self.error = error
        self.detail = detail


def _expectation(module: nn.Module | None, args: tuple) -> str:
    """What a layer expected of its input, when that is the visible cause of a failure."""
    value = args[0] if args else None
    if module is None or not isinstance(value, torch.Tensor) or value.ndim < 2:
        return ""
    for attribute, axis, what in (("in_channels", 1, "input channels"),
                                  ("num_features", 1, "channels"),
                                  ("in_features", -1, "features in the last axis")):
        expected = getattr(module, attribute, None)
        if isinstance(expected, int) and value.shape[axis] != expected:
            return (f"{type(module).__name__} expects {expected} {what}, its input "
                    f"{tuple(value.shape[1:])} has {value.shape[axis]}")
    return ""


class MetaDeviceError(CnnlabError):
    """A model built on the meta device needs real values for some operation."""


def parse_input_shape(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"3x32x32"`` or ``(3, 32, 32)`` -> ``(3, 32, 32)``: one sample, without the batch."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.lower().replace("*", "x").split("x")]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise CnnlabError(
                f"--input {value!r} is not a shape; write sizes joined by x, channels first, "
                "e.g. 3x32x32 (symbolic sizes such as 3xNxN work only for a layer spec)"
            ) from None
    else:
        shape = tuple(int(v) for v in value)
    if not shape or any(size < 1 for size in shape):
        raise CnnlabError(f"input shape {value!r} needs positive sizes, e.g. 3x32x32")
    return shape


def is_leaf_module(module: nn.Module) -> bool:
    """The rows' granularity: torch.nn's own layers (as torch.fx treats them)."""
    return (module.__module__.startswith(("torch.nn.", "torch.ao.nn."))
            and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)))


def inspect(
    model: nn.Module,
    input_shape: str | tuple[int, ...],
    *,
    input_dtype: torch.dtype | None = None,
    name: str | None = None,
    trace: str = "auto",
) -> InspectResult:
    """Shapes, parameters, receptive fields and MACs of every layer of ``model``.

    ``input_shape`` is one sample without the batch, channels first
    (``"3x32x32"``; ``"3x224"`` for a 1-d signal). The input has the dtype of
    the model's parameters unless ``input_dtype`` says otherwise; for integer
    inputs such as token ids (``torch.long``) every axis is a position. The
    model runs once on the ``meta`` device in eval mode (its mode is
    restored), so even large inputs cost no memory. ``trace``: ``"auto"``
    uses torch.fx and falls back to a recorded run when tracing fails;
    ``"fx"`` or ``"run"`` force one.

    Parameter totals count every parameter once (shared ones too), whether
    or not this forward pass uses it. MACs count multiply-accumulates of one
    sample in convolutions, transposed convolutions, linear layers and matrix
    products.

    >>> result = inspect(torchvision.models.resnet18(), "3x224x224")
    >>> result.row("layer4").receptive_field
    (Fraction(435, 1), Fraction(435, 1))
    """
    if trace not in TRACES:
        raise CnnlabError(f"trace {trace!r} is unknown; use one of {TRACES}")
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"inspect needs a torch.nn.Module, got {type(model).__name__}")
    shape = parse_input_shape(input_shape)
    name = name or type(model).__name__
    if input_dtype is None:
        input_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                           torch.float32)
    positional = not torch.is_floating_point(torch.empty(0, dtype=input_dtype))
    spatial_axes = tuple(range(1, len(shape) + 1)) if positional \
        else tuple(range(2, len(shape) + 1))
    started = time.perf_counter()

    with _eval_mode(model):
        graph, trace_error = None, ""
        if trace in ("auto", "fx"):
            try:
                graph = fx.symbolic_trace(model)
            except Exception as error:  # any failure of tracing means: use the recorded run
                if trace == "fx":
                    raise CnnlabError(f"torch.fx cannot trace {name}: {_first_line(error)}") \
                        from error
                trace_error = _first_line(error)
                log.info("torch.fx cannot trace %s (%s); recording one run instead", name,
                         trace_error)
        analyzer = _run_with_fallback(model, graph, shape, input_dtype, spatial_axes, name)

    result = _assemble(model, analyzer, name, shape, spatial_axes, positional)
    if graph is None:
        result.method = "run"
        if trace_error:
            result.notes.insert(0, (
                f"torch.fx could not trace the model ({trace_error}); the graph was recorded "
                "from one forward pass instead, so fields are exact for the branch this "
                "input takes"))
    result.seconds = time.perf_counter() - started
    return result


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The error's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}"


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextmanager
def _attributes_restored(model: nn.Module) -> Iterator[None]:
    """Undo attribute assignments a forward pass makes (caches of anchors, masks, sizes).

    Some modules store tensors they compute as plain attributes; after a meta
    pass those would be meta tensors, breaking the real pass and the user's model.
    """
    saved = [(module, dict(module.__dict__)) for module in model.modules()]
    try:
        yield
    finally:
        for module, attributes in saved:
            for key in set(module.__dict__) - set(attributes):
                del module.__dict__[key]
            module.__dict__.update(attributes)


def _run_with_fallback(model: nn.Module, graph: fx.GraphModule | None, shape: tuple[int, ...],
                       dtype: torch.dtype, spatial_axes: tuple[int, ...],
                       name: str) -> _Analyzer:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    attempts = ["meta"] if device.type == "meta" else ["meta", device]
    last: _Rejected | None = None
    for attempt in attempts:
        try:
            with _attributes_restored(model):
                return _run_once(model, graph, shape, dtype, spatial_axes,
                                 torch.device(attempt))
        except _Rejected as rejected:
            log.debug("run on %s failed at %s: %s", attempt, rejected.where, rejected.error)
            last = rejected
    assert last is not None
    shown = "x".join(str(s) for s in shape)
    cause = last.detail or _first_line(last.error)
    if device.type == "meta" and (isinstance(last.error, NotImplementedError)
                                  or "meta" in str(last.error).lower()):
        raise MetaDeviceError(
            f"{name} could not run on the meta device: layer {last.where} failed: {cause}. "
            "Its parameters have no values, so the pass cannot be repeated for real; build "
            "the model on the CPU (data-dependent operations such as nonzero need real "
            "values), or check the input size."
        ) from last.error
    raise CnnlabError(
        f"{name} rejects input {shown}: layer {last.where} failed: {cause}. Check the "
        "channels (first number) and use a size the model accepts."
    ) from last.error


def _run_once(model: nn.Module, graph: fx.GraphModule | None, shape: tuple[int, ...],
              dtype: torch.dtype, spatial_axes: tuple[int, ...],
              device: torch.device) -> _Analyzer:
    # Token ids of 1, not 0: id 0 is usually padding, which models may crop away.
    fill = 0 if torch.empty(0, dtype=dtype).is_floating_point() else 1
    example = torch.full((1, *shape), fill, dtype=dtype, device=device)
    input_field = Field(tuple(input_span(axis) for axis in spatial_axes))
    root = graph if graph is not None else model
    if device.type == "meta":
        replacements = {key: torch.empty_like(value, device="meta")
                        for key, value in _tensors(root)}
    else:
        replacements = dict(_tensors(root))
    parameter_names = {key for key, _ in root.named_parameters(remove_duplicate=False)}
    analyzer = _Analyzer({id(tensor): key for key, tensor in replacements.items()
                          if key in parameter_names})
    runner: nn.Module
    if graph is not None:
        runner = _FxRunner(graph, analyzer, input_field)
    else:
        runner = _RecordedRun(model, analyzer, input_field)
    with torch.no_grad():
        if device.type == "meta":
            torch.func.functional_call(runner, {f"target.{k}": v for k, v in
                                                replacements.items()}, (example,))
        else:
            runner(example)
    return analyzer


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


class _Analyzer:
    """Collects rows as operations run; fields are kept by the front ends."""

    def __init__(self, param_names: dict[int, str]) -> None:
        self.param_names = param_names
        self.rows: list[LayerRow] = []
        self.name_counts: Counter[str] = Counter()
        self.output: Any = None

    def step(self, call: Call, name: str, type_name: str, module_path: str) -> Any:
        outcome = _rules.apply(call)
        if call.module is not None:
            param_names = [f"{module_path}.{n}" if module_path else n
                           for n, _ in call.module.named_parameters()]
        else:
            param_names = [self.param_names[id(t)] for t, _ in call.operands()
                           if id(t) in self.param_names]
        if outcome.row or param_names:
            self._add_row(call, outcome, name, type_name, module_path, param_names)
        return outcome.field

    def _add_row(self, call: Call, outcome: _rules.Outcome, name: str, type_name: str,
                 module_path: str, param_names: list[str]) -> None:
        self.name_counts[name] += 1
        if self.name_counts[name] > 1:
            name = f"{name}#{self.name_counts[name]}"
        output = _rules._first_tensor(call.output)
        field = outcome.field
        while isinstance(field, tuple):
            field = field[0] if field else None
        row = LayerRow(
            name=name, type=type_name, module=module_path,
            output_shape=tuple(output.shape[1:]) if output.ndim else (),
            macs=outcome.macs, note=outcome.note, param_names=param_names,
        )
        if isinstance(field, Field):
            row.spans = field.spans if field.spans else None
            row.field_unknown = field.unknown
        self.rows.append(row)


class _FxRunner(nn.Module):
    """Runs a traced graph node by node, handing every call to the analyzer."""

    def __init__(self, graph: fx.GraphModule, analyzer: _Analyzer, input_field: Field) -> None:
        super().__init__()
        self.target = graph
        self.analyzer = analyzer
        self.input_field = input_field

    def forward(self, example: torch.Tensor) -> Any:
        interpreter = _FxInterpreter(self.target, self.analyzer, self.input_field)
        self.analyzer.output = interpreter.run(example)
        return self.analyzer.output


class _FxInterpreter(fx.Interpreter):
    def __init__(self, graph: fx.GraphModule, analyzer: _Analyzer, input_field: Field) -> None:
        super().__init__(graph)
        self.analyzer = analyzer
        self.input_field = input_field
        self.fields: dict[fx.Node, Any] = {}
        self.placeholders = 0

    def run_node(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            value = super().run_node(node)
            self.fields[node] = self.input_field if self.placeholders == 0 else CONSTANT
            self.placeholders += 1
            return value
        if node.op in ("get_attr", "output"):
            value = super().run_node(node)
            self.fields[node] = CONSTANT
            return value

        args, kwargs = self.fetch_args_kwargs_from_env(node)
        try:
            value = self._shortcut(node, args)
            if value is None:
                value = getattr(self, node.op)(node.target, args, kwargs)
        except Exception as error:
            module = self.fetch_attr(node.target) if node.op == "call_module" else None
            raise _Rejected(self._describe(node), error, _expectation(module, args)) from error

        module = self.fetch_attr(node.target) if node.op == "call_module" else None
        if module is not None:
            name, type_name, owner = node.target, type(module).__name__, node.target
        else:
            owner = _owner(node)
            op = _rules.op_name(node.target)
            name, type_name = (f"{owner}.{op}" if owner else op), op
        call = Call(
            op=_rules.op_name(node.target) if module is None else type_name,
            module=module, args=args, kwargs=kwargs,
            arg_fields=fx.node.map_arg(node.args, lambda n: self.fields[n]),
            kwarg_fields=fx.node.map_arg(node.kwargs, lambda n: self.fields[n]),
            output=value,
        )
        self.fields[node] = self.analyzer.step(call, name, type_name, owner)
        return value

    def _shortcut(self, node: fx.Node, args: tuple) -> torch.Tensor | None:
        """The output of a shape-preserving elementwise layer on meta tensors, without running it.

        On the meta device batch norm and several activations run as Python
        decompositions (10-40 ms each: most of MobileNet's or DenseNet's
        inspection time), yet their output always has the input's shape.
        Batch norm's channel count is still checked, so a mismatch is reported.
        """
        if len(args) < 1 or not isinstance(args[0], torch.Tensor):
            return None
        value = args[0]
        if value.device.type != "meta" or any(isinstance(a, torch.Tensor) for a in args[1:]):
            return None
        if node.op == "call_module":
            module = self.fetch_attr(node.target)
            if len(args) != 1 or not isinstance(module, _rules._ELEMENTWISE_MODULES):
                return None
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                    value.ndim < 2 or value.shape[1] != module.num_features):
                return None
            if isinstance(module, nn.PReLU):
                return None
            return value if getattr(module, "inplace", False) else torch.empty_like(value)
        if (node.op in ("call_function", "call_method")
                and _rules.op_name(node.target) in _rules.UNARY_ACTIVATIONS):
                inplace = node.kwargs.get("inplace", False) or str(node.target).endswith("_")
                return value if inplace else torch.empty_like(value)
        return None

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{node.target!r} ({type(self.fetch_attr(node.target)).__name__})"
        owner = _owner(node)
        op = _rules.op_name(node.target)
        return f"{owner + '.' if owner else ''}{op!r}"


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


class _RecordedRun(nn.Module):
    """Runs the model once, recording torch calls outside leaf modules and leaf module calls."""

    def __init__(self, model: nn.Module, analyzer: _Analyzer, input_field: Field) -> None:
        super().__init__()
        self.target = model
        self.analyzer = analyzer
        self.input_field = input_field

    def forward(self, example: torch.Tensor) -> Any:
        recorder = _Recorder(self.analyzer)
        recorder.fields[id(example)] = self.input_field
        recorder.keep.append(example)
        handles = []
        for path, module in self.target.named_modules():
            handles.append(module.register_forward_pre_hook(recorder.pre_hook(path, module)))
            handles.append(module.register_forward_hook(recorder.post_hook(path, module),
                                                        with_kwargs=True))
        try:
            with recorder:
                output = self.target(example)
        except _Rejected:
            raise
        except Exception as error:
            raise _Rejected(recorder.location(), error, recorder.expectation()) from error
        finally:
            for handle in handles:
                handle.remove()
        self.analyzer.output = output
        return output


class _Recorder(TorchFunctionMode):
    def __init__(self, analyzer: _Analyzer) -> None:
        super().__init__()
        self.analyzer = analyzer
        self.fields: dict[int, Any] = {}
        self.keep: list[Any] = []  # holds every value so no id() is reused during the run
        self.stack: list[tuple[str, nn.Module]] = []
        self.leaf_depth = 0
        self.last_op = ""
        self.last_args: tuple = ()
        # The analysis itself calls torch (shapes, numel) while the mode is
        # active; those calls must pass through unrecorded.
        self.busy = False

    def location(self) -> str:
        if not self.stack:
            return repr(self.last_op or "forward")
        path, module = self.stack[-1]
        if is_leaf_module(module):
            return f"{path!r} ({type(module).__name__})"
        return f"{path + '.' if path else ''}{self.last_op}"

    def expectation(self) -> str:
        if not self.stack or not self.last_args:
            return ""
        return _expectation(self.stack[-1][1], self.last_args)

    def pre_hook(self, path: str, module: nn.Module):
        def hook(_module: nn.Module, args: tuple) -> None:
            self.stack.append((path, module))
            self.last_args = args
            if is_leaf_module(module):
                self.leaf_depth += 1

        return hook

    def post_hook(self, path: str, module: nn.Module):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self.stack.pop()
            if not is_leaf_module(module):
                return
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                self.busy = True
                try:
                    call = self._call(type(module).__name__, module, args, kwargs, output)
                    field = self.analyzer.step(call, path, type(module).__name__, path)
                    self._store(output, field)
                finally:
                    self.busy = False

        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.busy:
            return func(*args, **kwargs)
        self.last_op = _rules.op_name(func)
        output = func(*args, **kwargs)
        if self.leaf_depth == 0:
            self.busy = True
            try:
                op = _rules.op_name(func)
                owner = self.stack[-1][0] if self.stack else ""
                call = self._call(op, None, args, kwargs, output)
                field = self.analyzer.step(call, f"{owner}.{op}" if owner else op, op, owner)
                self._store(output, field)
            finally:
                self.busy = False
        return output

    def _call(self, op: str, module: nn.Module | None, args: tuple, kwargs: dict,
              output: Any) -> Call:
        def field_of(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return self.fields.get(id(value), CONSTANT)
            return value

        return Call(op=op, module=module, args=tuple(args), kwargs=dict(kwargs),
                    arg_fields=tree_map(field_of, tuple(args)),
                    kwarg_fields=tree_map(field_of, dict(kwargs)), output=output)

    def _store(self, output: Any, field: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.fields[id(output)] = field if field is not None else CONSTANT
            self.keep.append(output)
        elif isinstance(output, (tuple, list)):
            fields = field if isinstance(field, tuple) else (field,) * len(output)
            for item, item_field in zip(output, fields):
                self._store(item, item_field)


def _assemble(model: nn.Module, analyzer: _Analyzer, name: str, shape: tuple[int, ...],
              spatial_axes: tuple[int, ...], positional: bool) -> InspectResult:
    """Count each parameter once, at its first use, and gather the notes."""
    by_name = dict(model.named_parameters(remove_duplicate=False))
    counted: set[int] = set()
    for row in analyzer.rows:
        shared = False
        for param_name in row.param_names:
            param = by_name.get(param_name)
            if param is None:
                continue
            if id(param) in counted:
                shared = True
                continue
            counted.add(id(param))
            if param.requires_grad:
                row.trainable_params += param.numel()
            else:
                row.frozen_params += param.numel()
        if shared and row.params == 0:
            row.note = _join(row.note, "shares parameters counted at an earlier row")

    unique = {id(p): p for p in model.parameters()}
    unused = [n for n, p in model.named_parameters() if id(p) not in counted]
    unused_modules = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in unused})
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)

    notes = []
    unused_count = sum(unique[id(by_name[n])].numel() for n in unused)
    if unused:
        notes.append(f"{unused_count:,} parameters in {', '.join(unused_modules) or 'the root'} "
                     "are not used by this forward pass (counted in the totals)")
    unanalysed = [f"{row.name} ({row.type})" for row in analyzer.rows
                  if row.field_unknown and row.note.startswith("not analysed")]
    macs_unknown = [row.name for row in analyzer.rows if row.macs is None]
    output = _rules._first_tensor(analyzer.output)
    names = _dimension_names(len(spatial_axes))
    return InspectResult(
        model=name, input_shape=shape, dimension_names=names, rows=analyzer.rows,
        output_shape=None if output is None else tuple(output.shape[1:]),
        total_params=total, trainable_params=trainable, frozen_params=total - trainable,
        unused_params=unused_count, unused_modules=unused_modules,
        total_macs=sum(row.macs or 0 for row in analyzer.rows), macs_unknown=macs_unknown,
        method="torch.fx", notes=notes, unanalysed=unanalysed,
    )


def _dimension_names(count: int) -> tuple[str, ...]:
    return {0: (), 1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}.get(
        count, tuple(f"d{i}" for i in range(count)))


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def layer_names(model: nn.Module) -> list[str]:
    """Every submodule name a user can pick (``--layer NAME``), in definition order.

    These are ``model.named_modules()`` paths such as ``layer3`` or
    ``features.4``; containers are included because cutting a network after a
    whole stage is the usual choice for transfer learning.
    """
    return [name for name, _ in model.named_modules() if name]


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``, or a CnnlabError listing close names."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    import difflib

    close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise CnnlabError(f"layer {name!r} is not a submodule of {type(model).__name__}.{hint} "
                      "List the names with `cnnlab inspect MODEL --layers`.")

