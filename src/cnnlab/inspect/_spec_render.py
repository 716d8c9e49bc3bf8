"""Render a layer-spec analysis: per-layer costs with and without weight sharing."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.table import Table

from cnnlab.inspect._spec import SpecResult, format_expression


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return "-" if value == 0 else f"{value:,}"
    return format_expression(value)


def _per_dimension(values: tuple[Any, ...] | None, exact: bool = True) -> str:
    if values is None:
        return "-"
    shown = [_value(v) if v != 0 else "0" for v in values]
    if len(set(shown)) > 1:
        shown = [t if t.replace(",", "").isalnum() else f"({t.replace(' ', '')})" for t in shown]
    text = shown[0] if len(set(shown)) == 1 else "x".join(shown)
    return text if exact else f"≤{text}"


def _shape(shape: tuple[Any, ...]) -> str:
    parts = []
    for value in shape:
        text = str(value) if isinstance(value, int) else format_expression(value)
        parts.append(text if text.replace("_", "").isalnum() else f"({text.replace(' ', '')})")
    return "x".join(parts)


def render_spec_table(result: SpecResult) -> Table:
    """Parameters with sharing (conv), without it (locally connected) and fully connected."""
    table = Table(title=f"{result.spec}  at input {_shape(result.input_shape)}",
                  title_justify="left", caption=_caption(result), caption_justify="left")
    for header in ("layer", "type", "output", "params", "RF", "jump", "start", "MACs",
                   "locally connected", "fully connected"):
        table.add_column(header, justify="left" if header in ("layer", "type", "output")
                         else "right")
    for row in result.rows:
        table.add_row(row.text, row.type, _shape(row.output_shape), _value(row.params),
                      _per_dimension(row.receptive_field, row.exact), _per_dimension(row.jump),
                      _per_dimension(row.start), _value(row.macs),
                      _value(row.locally_connected_params), _value(row.fully_connected_params))
    table.add_section()
    table.add_row("total", "", "", _value(result.total_params), "", "", "",
                  _value(result.total_macs), _value(result.total_locally_connected),
                  _value(result.total_fully_connected))
    return table


def _caption(result: SpecResult) -> str:
    saving = result.saving()
    lines = []
    for key, label in (("locally_connected", "locally connected (no weight sharing)"),
                       ("fully_connected", "fully connected")):
        ratio = saving[key]
        if ratio is None:
            continue
        if isinstance(ratio, float):
            lines.append(f"As {label} layers the stack needs {ratio:,.1f} times the "
                         "parameters.")
        else:
            examples = _examples(result, ratio)
            lines.append(f"As {label} layers the stack needs {format_expression(ratio)} times "
                         f"the parameters{examples}.")
    lines.append("params, MACs: with weight sharing (the convolution as written); locally "
                 "connected: one kernel and bias per output position; fully connected: every "
                 "output unit connected to every input unit. RF, jump, start in input pixels.")
    if result.definitions:
        lines.append("Sizes: " + "; ".join(result.definitions) + ".")
    if result.symbols:
        lines.append(f"Symbols: {', '.join(result.symbols)} (give numbers, e.g. --input "
                     "3x32x32, for counts).")
    return "\n".join(lines)


def _examples(result: SpecResult, ratio: Any) -> str:
    """The ratio at familiar sizes when one size symbol is free: 32 (CIFAR) and 224 (ImageNet)."""
    if len(result.symbols) != 1:
        return ""
    name = result.symbols[0]
    values = []
    for size in (32, 224):
        try:
            value = result.evaluate(ratio, **{name: size})
        except (TypeError, ZeroDivisionError):
            continue
        if value.is_number and value > 0:
            values.append(f"{float(value):,.0f} at {name}={size}")
    return f" ({'; '.join(values)})" if values else ""


def spec_csv(result: SpecResult) -> str:
    data = result.to_dict()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["layer", "type", "output_shape", "params", "macs", "locally_connected_params",
               "fully_connected_params", "receptive_field", "jump", "start", "field_exact"]
    writer.writerow(columns)
    for layer in data["layers"]:
        writer.writerow([
            "x".join(str(v) for v in layer[c]) if isinstance(layer[c], list) else
            ("" if layer[c] is None else layer[c]) for c in columns])
    return buffer.getvalue()
