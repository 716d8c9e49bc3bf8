"""What an inspection returns: one row per layer and the totals, rendered elsewhere."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from cnnlab._util import CnnlabError
from cnnlab.inspect._field import Span


@dataclass
class LayerRow:
    """One layer of the table: a leaf module, or a functional operation that matters.

    ``spans`` holds the receptive field of the output along each spatial input
    dimension (see :class:`cnnlab.inspect._field.Span`); None when the output
    depends on no input pixel (``constant``) or could not be analysed
    (``field_unknown`` then says where analysis stopped).
    """

    name: str
    type: str
    module: str  # the module path this row belongs to (its owner for functional operations)
    output_shape: tuple[int, ...] | None  # without the batch dimension
    trainable_params: int = 0
    frozen_params: int = 0
    macs: int | None = 0
    spans: tuple[Span, ...] | None = None
    field_unknown: str = ""
    note: str = ""
    param_names: list[str] = field(default_factory=list, repr=False)

    @property
    def params(self) -> int:
        return self.trainable_params + self.frozen_params

    @property
    def constant(self) -> bool:
        return self.spans is None and not self.field_unknown

    @property
    def receptive_field(self) -> tuple[Fraction, ...] | None:
        """Field size in input pixels along each spatial dimension (None: no field)."""
        return None if self.spans is None else tuple(s.size for s in self.spans)

    @property
    def jump(self) -> tuple[Fraction | None, ...] | None:
        """Effective stride: input pixels between neighbouring units (None once pooled away)."""
        return None if self.spans is None else tuple(s.step for s in self.spans)

    @property
    def start(self) -> tuple[Fraction | None, ...] | None:
        """Centre of unit 0's field, in input pixels (negative: it lies in the padding)."""
        return None if self.spans is None else tuple(s.centre for s in self.spans)

    @property
    def exact(self) -> bool:
        return self.spans is not None and all(s.exact and not s.flat for s in self.spans)

    def centre_unit(self) -> tuple[int, ...]:
        """Index of the centre unit along each spatial dimension (0 where no axis remains)."""
        if self.spans is None or self.output_shape is None:
            raise CnnlabError(f"layer {self.name!r} has no receptive field to pick a unit from")
        units = []
        for span in self.spans:
            if span.axis is None or span.axis - 1 >= len(self.output_shape):
                units.append(0)
            else:
                units.append(self.output_shape[span.axis - 1] // 2)
        return tuple(units)

    def field_box(self, unit: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
        """First and last input pixel (inclusive) seen by ``unit``, per spatial dimension.

        ``unit`` indexes the output along each spatial dimension (default: the
        centre unit). Pixels may lie outside the input (in the padding); clip
        them yourself if you need only real pixels. A bound is rounded outwards.
        """
        if self.spans is None:
            reason = self.field_unknown or "its output does not depend on the input"
            raise CnnlabError(f"layer {self.name!r} has no receptive field: {reason}")
        unit = self.centre_unit() if unit is None else tuple(unit)
        if len(unit) != len(self.spans):
            raise CnnlabError(
                f"unit {unit} needs one index per spatial dimension ({len(self.spans)})")
        boxes = []
        for span, index in zip(self.spans, unit):
            first, last = span.box(index)
            boxes.append((math.floor(first), math.ceil(last)))
        return boxes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "module": self.module,
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "params": self.params,
            "macs": self.macs,
            "receptive_field": _numbers(self.receptive_field),
            "jump": _numbers(self.jump),
            "start": _numbers(self.start),
            "field": None if self.spans is None else [_span_dict(s) for s in self.spans],
            "field_unknown": self.field_unknown or None,
            "note": self.note,
        }


@dataclass
class InspectResult:
    """Per-layer shapes, parameters, receptive fields and MACs of one model at one input size.

    Render it with :func:`cnnlab.inspect.render_table`, :meth:`to_json` or
    :meth:`to_csv`. ``method`` says how the graph was obtained: ``"torch.fx"``
    (the traced graph) or ``"run"`` (one recorded forward pass, when tracing
    failed; exact for the branch that input takes).
    """

    model: str
    input_shape: tuple[int, ...]
    dimension_names: tuple[str, ...]
    rows: list[LayerRow]
    output_shape: tuple[int, ...] | None
    total_params: int
    trainable_params: int
    frozen_params: int
    unused_params: int
    unused_modules: list[str]
    total_macs: int
    macs_unknown: list[str]
    method: str
    notes: list[str]
    unanalysed: list[str]
    seconds: float = 0.0

    def layer_names(self) -> list[str]:
        """Names of the rows, in execution order (the names ``row`` and ``--layer`` accept)."""
        return [row.name for row in self.rows]

    def row(self, name: str) -> LayerRow:
        """The row called ``name``; a module container's name picks its last row."""
        for row in self.rows:
            if row.name == name:
                return row
        inside = [row for row in self.rows if row.module == name
                  or row.module.startswith(name + ".") or row.name.startswith(name + ".")]
        if inside:
            return inside[-1]
        import difflib

        close = difflib.get_close_matches(name, self.layer_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CnnlabError(f"layer {name!r} is not in {self.model}.{hint} "
                          "List the names with `cnnlab inspect MODEL --layers`.")

    @property
    def final_receptive_field(self) -> tuple[Fraction, ...] | None:
        for row in reversed(self.rows):
            if row.spans is not None:
                return row.receptive_field
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "dimension_names": list(self.dimension_names),
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "unused_params": self.unused_params,
            "unused_modules": self.unused_modules,
            "total_macs": self.total_macs,
            "macs_unknown": self.macs_unknown,
            "method": self.method,
            "notes": self.notes,
            "unanalysed": self.unanalysed,
            "seconds": round(self.seconds, 4),
            "layers": [row.to_dict() for row in self.rows],
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        from cnnlab.inspect._render import result_csv

        return result_csv(self)


def _number(value: Fraction | None) -> float | int | None:
    if value is None:
        return None
    if value.denominator == 1:
        return int(value)
    return float(value)


def _numbers(values: tuple[Fraction | None, ...] | None) -> list | None:
    return None if values is None else [_number(v) for v in values]


def _span_dict(span: Span) -> dict[str, Any]:
    return {
        "first": _number(span.lo), "last": _number(span.hi), "size": _number(span.size),
        "field_jump": _number(span.jump), "exact": span.exact, "dense": span.dense,
        "flat": span.flat, "axis": span.axis,
    }
