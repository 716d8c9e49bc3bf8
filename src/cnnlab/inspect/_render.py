"""Render an inspection as a rich table, plain text or CSV (JSON lives on the result)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from fractions import Fraction

from rich.console import Console
from rich.table import Table

from cnnlab.inspect._field import Span
from cnnlab.inspect._result import InspectResult, LayerRow


def format_count(value: int | None, zero: str = "-") -> str:
    if value is None:
        return "?"
    return zero if value == 0 else f"{value:,}"


def format_macs(value: int | None) -> str:
    """MACs with a unit: 1.81 G, 448 k; small counts in full."""
    if value is None:
        return "?"
    if value == 0:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return str(value)


def format_fraction(value: Fraction | None) -> str:
    if value is None:
        return "-"
    if value.denominator == 1:
        return str(value.numerator)
    if value.denominator in (2, 4):
        return f"{float(value):g}"
    return f"{value.numerator}/{value.denominator}"


def _joined(values: Sequence[str]) -> str:
    return values[0] if len(set(values)) == 1 else "x".join(values)


def format_field(row: LayerRow) -> str:
    """The receptive field size: ``7``, ``7x5``; ``≤`` marks a bound, ``∪`` a flat union."""
    if row.spans is None:
        return "?" if row.field_unknown else "-"
    return _joined([_span_size(span) for span in row.spans])


def _span_size(span: Span) -> str:
    if span.flat:
        return f"∪{format_fraction(span.size)}"
    if not span.exact:
        return f"≤{math.ceil(span.size)}"
    return format_fraction(span.size)


def format_jump(row: LayerRow) -> str:
    if row.spans is None:
        return "?" if row.field_unknown else "-"
    return _joined([format_fraction(span.step) for span in row.spans])


def format_start(row: LayerRow) -> str:
    if row.spans is None:
        return "?" if row.field_unknown else "-"
    return _joined([format_fraction(span.centre) for span in row.spans])


def format_shape(shape: Sequence[int] | None) -> str:
    if shape is None:
        return "-"
    return "x".join(str(s) for s in shape) if shape else "scalar"


def render_table(result: InspectResult) -> Table:
    """The layer table with totals, notes marked by number."""
    shape = format_shape(result.input_shape)
    table = Table(title=f"{result.model} at input {shape}", title_justify="left",
                  caption=_caption(result), caption_justify="left", show_lines=False)
    notes = _numbered_notes(result)
    headers = ["layer", "type", "output", "params", "frozen", "RF", "jump", "start", "MACs"]
    for header in headers + (["note"] if notes else []):
        table.add_column(header, justify="left" if header in ("layer", "type", "output")
                         else "right", no_wrap=True)
    for row in result.rows:
        cells = [row.name, row.type, format_shape(row.output_shape),
                 format_count(row.trainable_params), format_count(row.frozen_params),
                 format_field(row), format_jump(row), format_start(row), format_macs(row.macs)]
        if notes:
            cells.append(f"[{notes[row.note]}]" if row.note else "")
        table.add_row(*cells)
    table.add_section()
    totals = ["total", "", format_shape(result.output_shape),
              format_count(result.trainable_params, "0"),
              format_count(result.frozen_params, "0"), "", "", "",
              format_macs(result.total_macs) + ("+" if result.macs_unknown else "")]
    table.add_row(*totals, *([""] if notes else []))
    return table


def _numbered_notes(result: InspectResult) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for row in result.rows:
        note = row.note
        if note and note not in numbers:
            numbers[note] = len(numbers) + 1
    return numbers


def _caption(result: InspectResult) -> str:
    names = "x".join(result.dimension_names) or "-"
    uncounted = (f" (plus uncounted: {', '.join(result.macs_unknown)})"
                 if result.macs_unknown else "")
    lines = [
        (f"Parameters: {result.total_params:,} ({result.trainable_params:,} trainable, "
         f"{result.frozen_params:,} frozen). MACs per sample: "
         f"{format_macs(result.total_macs)}{uncounted}."),
        (f"RF: receptive field in input pixels ({names}); jump: input pixels between "
         "neighbouring units; start: centre of the first unit's field (negative: in the "
         "padding). ≤: an upper bound. ∪: union over flattened positions."),
        f"Graph: {result.method}; analysed in {result.seconds:.2f} s.",
    ]
    for note, number in _numbered_notes(result).items():
        lines.append(f"[{number}] {note}")
    for note in result.notes:
        lines.append(f"Note: {note}")
    if result.unanalysed:
        lines.append("Not analysed (fields unknown after them): " + ", ".join(result.unanalysed))
    return "\n".join(lines)


def render_text(table: Table, width: int = 150) -> str:
    """A rich renderable as plain text, for files and expected-output tests."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def result_csv(result: InspectResult) -> str:
    """One line per layer; per-dimension columns such as ``rf_H``, ``jump_W``."""
    names = result.dimension_names
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "type", "module", "output_shape", "trainable_params",
                     "frozen_params", "macs"]
                    + [f"rf_{n}" for n in names] + [f"jump_{n}" for n in names]
                    + [f"start_{n}" for n in names] + ["field_exact", "field_unknown", "note"])
    for row in result.rows:
        spans = row.spans or ()
        sizes = [_csv_number(s.size) for s in spans] or [""] * len(names)
        jumps = [_csv_number(s.step) for s in spans] or [""] * len(names)
        starts = [_csv_number(s.centre) for s in spans] or [""] * len(names)
        writer.writerow([row.name, row.type, row.module, format_shape(row.output_shape),
                         row.trainable_params, row.frozen_params,
                         "" if row.macs is None else row.macs,
                         *sizes, *jumps, *starts,
                         "" if row.spans is None else row.exact, row.field_unknown, row.note])
    return buffer.getvalue()


def _csv_number(value: Fraction | None) -> str:
    if value is None:
        return ""
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.6g}"
