"""Render a :class:`LabResult` as ``index.html``, ``report.md`` and ``results.json``.

All three are built from one cleaned copy of the results (:func:`results_data`),
so a number shown in the HTML is the number in the JSON. The HTML page is
self-contained: figures are embedded as base64 ``data:`` URIs, the CSS is
inline, there is no script, and a Content-Security-Policy forbids the page
from loading anything. Jinja2 autoescapes every value, so class names, file
names and error messages are shown as text, never interpreted as markup.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from cnnlab._util import write_json_atomic, write_text_atomic
from cnnlab.report.model import LabResult

log = logging.getLogger(__name__)

RESULTS_FORMAT = "cnnlab-lab-results"
RESULTS_VERSION = 1
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml"}
NUMBERS_INLINE_LIMIT = 50_000  # characters of JSON shown in the page; more goes to results.json
LARGE_FIGURE_BYTES = 2_000_000  # a figure this big makes the page slow on a phone: warn


def write_report(lab: LabResult, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``index.html``, ``report.md`` and ``results.json`` into the report folder.

    ``out_dir`` defaults to ``lab.out_dir``. Each file is written atomically,
    so a reader never sees half a report. Returns the paths by file name and
    also stores them in ``lab.files``.
    """
    out = Path(out_dir if out_dir is not None else lab.out_dir)
    data = results_data(lab, out)
    files = {"index.html": out / "index.html", "report.md": out / "report.md",
             "results.json": out / "results.json"}
    write_json_atomic(files["results.json"], data)
    write_text_atomic(files["index.html"], render_html(data, out))
    write_text_atomic(files["report.md"], render_markdown(data, out))
    for path in files.values():
        make_readable(path)
    lab.files = files
    return files


def make_readable(path: Path) -> None:
    """Let group and others read ``path``: atomic writes create files as 0600, but a report
    is meant to be shared (served by a web server, opened by a colleague)."""
    try:
        path.chmod(path.stat().st_mode | 0o044)
    except OSError as error:
        log.debug("cannot make %s readable: %s", path, error)


# ----------------------------------------------------------------------------------------------
# The cleaned data: what results.json holds and what the page shows.


def results_data(lab: LabResult, out_dir: str | os.PathLike) -> dict[str, Any]:
    """The lab as strict JSON data: every study's numbers, tables, findings and the provenance.

    Figure paths are rewritten relative to the report folder; NumPy and torch
    numbers become plain numbers; NaN and infinities become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON has no such numbers).
    """
    out = Path(out_dir)
    studies = []
    for entry in lab.studies:
        item = entry.to_dict()
        if item["result"] is not None:
            result = dict(item["result"])
            result["figures"] = [
                {**figure, "path": _report_path(figure["path"], out, entry.folder)}
                for figure in result.get("figures", [])
            ]
            item["result"] = result
        studies.append(item)
    counts = {status: sum(s["status"] == status for s in studies)
              for status in ("ok", "failed", "pending")}
    return clean_json({
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "summary": {"studies": len(studies), **counts},
        "provenance": lab.provenance.to_dict(),
        "studies": studies,
    })


def clean_json(value: Any) -> Any:
    """A copy of ``value`` with only JSON types (see :func:`results_data`)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [clean_json(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # NumPy arrays and scalars, torch tensors
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return clean_json(value.tolist())
    if hasattr(value, "item"):
        return clean_json(value.item())
    return str(value)


def _report_path(path: str, out: Path, folder: str) -> str:
    """A figure path relative to the report folder (posix separators)."""
    absolute = Path(path) if Path(path).is_absolute() else out / folder / path
    try:
        return Path(os.path.relpath(absolute, out)).as_posix()
    except ValueError:  # another drive on Windows: keep it absolute
        return absolute.as_posix()


# ----------------------------------------------------------------------------------------------
# Text formatting shared by HTML and Markdown.


def format_value(value: Any) -> str:
    """How a number reads in the report: 4 significant digits, thousands separated.

    ``0.87345 -> "0.8735"``, ``123.456 -> "123.5"``, ``12345.6 -> "12,346"``,
    ``1234567 -> "1,234,567"`` (an int), ``2.5e-07 -> "2.500e-07"``,
    ``None -> "—"``, ``True -> "yes"``. Strings are shown as given.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if 1e-3 <= magnitude < 1e6:
            decimals = max(0, 3 - math.floor(math.log10(magnitude)))
            return f"{value:,.{decimals}f}"
        return f"{value:.3e}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def format_seconds(seconds: float | None) -> str:
    """``42.1 -> "42 s"``, ``754 -> "12 min 34 s"``, ``3725 -> "1 h 2 min"``."""
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _anchor(name: str, taken: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "study"
    anchor, suffix = f"study-{slug}", 2
    while anchor in taken:
        anchor, suffix = f"study-{slug}-{suffix}", suffix + 1
    taken.add(anchor)
    return anchor


def _status_text(study: dict[str, Any]) -> str:
    if study["status"] == "ok":
        return "reused" if study["cached"] else "ok"
    return study["status"]


def _timing_text(study: dict[str, Any], profile: str) -> str:
    if study["status"] == "pending":
        budget = study["budget_seconds"]
        return f"not run yet (budget {format_seconds(budget)})" if budget else "not run yet"
    text = f"wall time {format_seconds(study['wall_seconds'])}"
    budget = study["budget_seconds"]
    if budget:
        share = 100 * study["wall_seconds"] / budget
        text += f" of a {format_seconds(budget)} budget ({profile} profile, {share:.0f}%)"
        if study["wall_seconds"] > budget:
            text += ": over budget"
    if study["cached"]:
        text += "; reused from an earlier lab"
    return text


def _study_views(data: dict[str, Any], out: Path | None, embed: bool) -> list[dict[str, Any]]:
    """Per-study values for the templates: anchors, formatted cells, figure sources."""
    profile = data["provenance"]["profile"]
    seed = data["provenance"]["seed"]
    taken: set[str] = set()
    views = []
    for study in data["studies"]:
        result = study["result"] or {}
        setup = dict(result.get("setup", {}))
        setup.setdefault("profile", profile)
        setup.setdefault("seed", seed)
        if study["budget_seconds"]:
            setup.setdefault("budget", format_seconds(study["budget_seconds"]))
        if study.get("versions"):
            setup.setdefault("versions", ", ".join(f"{name} {version}" for name, version
                                                   in study["versions"].items()))
        numbers = result.get("numbers") or {}
        numbers_json = json.dumps(numbers, indent=1, ensure_ascii=False) if numbers else ""
        views.append({
            **study,
            "anchor": _anchor(study["name"], taken),
            "status_text": _status_text(study),
            "timing": _timing_text(study, profile),
            "wall_text": format_seconds(study["wall_seconds"])
            if study["status"] != "pending" else "—",
            "findings": result.get("findings", []),
            "setup_rows": [_setup_row(key, value) for key, value in setup.items()],
            "tables": [_table_view(table) for table in result.get("tables", [])],
            "figures": [_figure_view(figure, out, embed)
                        for figure in result.get("figures", [])],
            "numbers_json": numbers_json if len(numbers_json) <= NUMBERS_INLINE_LIMIT else "",
            "numbers_count": _count_numbers(numbers),
        })
    return views


def _setup_row(key: str, value: Any) -> tuple[str, str]:
    """A setup entry as (label, text); data checksums shortened (provenance shows them whole)."""
    if key == "data_checksums" and isinstance(value, dict):
        parts = []
        for dataset, source in value.items():
            checksum = str(source.get("checksum", "") if isinstance(source, dict) else source)
            parts.append(f"{dataset} ({checksum[:19]}…)" if len(checksum) > 20
                         else f"{dataset} ({checksum})")
        return "data checksums", ", ".join(parts)
    return str(key).replace("_", " "), format_value(value)


def _table_view(table: dict[str, Any]) -> dict[str, Any]:
    rows = table.get("rows", [])
    width = max((len(row) for row in rows), default=0)
    columns = [[row[index] if index < len(row) else None for row in rows]
               for index in range(width)]
    texts = [format_column(column) for column in columns]
    numeric = [any(_is_number(v) for v in column)
               and all(_is_number(v) or v is None for v in column) for column in columns]
    cells = [[{"text": texts[index][row_index], "number": _is_number(cell),
               "raw": json.dumps(cell, ensure_ascii=False)}
              for index, cell in enumerate(row)] for row_index, row in enumerate(rows)]
    numeric += [False] * (len(table.get("columns", [])) - len(numeric))
    return {**table, "cells": cells, "numeric": numeric}


def format_column(values: list[Any]) -> list[str]:
    """Format a table column: its floats share one number of decimals, so they line up.

    The decimals give the largest float 4 significant digits (``[1.0, 0.5] ->
    ["1.000", "0.500"]``). Where that would leave a small value in the same
    column with fewer than 2 significant digits, or a float is outside
    0.001..1e6, each value is formatted on its own (:func:`format_value`).
    """
    floats = [v for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    texts = [format_value(v) for v in values]
    if not floats:
        return texts
    magnitudes = [abs(v) for v in floats]
    if min(magnitudes) < 1e-3 or max(magnitudes) >= 1e6:
        return texts
    decimals = max(0, 3 - math.floor(math.log10(max(magnitudes))))
    # Significant digits the smallest value keeps at those decimals.
    if math.floor(math.log10(min(magnitudes))) + decimals + 1 < 2:
        return texts
    return [f"{v:,.{decimals}f}" if isinstance(v, float) and math.isfinite(v) else text
            for v, text in zip(values, texts, strict=True)]


def _figure_view(figure: dict[str, Any], out: Path | None, embed: bool) -> dict[str, Any]:
    """Embed the figure file as a data URI; a missing or odd file becomes a visible note."""
    view = {**figure, "src": "", "problem": ""}
    if out is None:  # nothing to check against: the link is all there is
        return view
    path = out / figure["path"]
    media_type = IMAGE_TYPES.get(path.suffix.lower())
    if media_type is None:
        view["problem"] = f"cannot embed {figure['path']}: not an image file type the page shows"
    elif not path.is_file():
        view["problem"] = f"figure file {figure['path']} is missing"
    elif embed:
        payload = path.read_bytes()
        if len(payload) > LARGE_FIGURE_BYTES:
            log.warning("figure %s is %.1f MB; the report embeds it, which makes the page slow",
                        path, len(payload) / 1e6)
        view["src"] = f"data:{media_type};base64,{base64.b64encode(payload).decode('ascii')}"
    return view


def _count_numbers(value: Any) -> int:
    if isinstance(value, Mapping):
        return sum(_count_numbers(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_numbers(item) for item in value)
    return 1 if _is_number(value) else 0


def _provenance_rows(provenance: dict[str, Any]) -> list[tuple[str, str]]:
    machine = provenance.get("machine", {})
    gpus = machine.get("gpus") or []
    gpu_text = ", ".join(f"{gpu.get('name', '?')} ({gpu.get('memory_gib', '?')} GiB)"
                         for gpu in gpus) or "none"
    if gpus and machine.get("cuda"):
        gpu_text += f"; CUDA {machine['cuda']}"
    cores = machine.get("cpu_cores")
    usable = machine.get("cpu_cores_usable")
    cores_text = f"{cores} cores" + (f" ({usable} usable)" if usable not in (None, cores) else "")
    rows = [
        ("cnnlab version", provenance.get("cnnlab_version", "")),
        ("command", provenance.get("command", "")),
        ("profile", provenance.get("profile", "")),
        ("seed", format_value(provenance.get("seed"))),
        ("device", provenance.get("device", "")),
        ("started", provenance.get("started_at", "")),
        ("finished", provenance.get("finished_at", "")),
        ("wall time (this run)", format_seconds(provenance.get("wall_seconds"))),
        ("CPU", f"{machine.get('cpu', '?')}, {cores_text}"),
        ("memory", f"{machine.get('memory_gib', '?')} GiB"),
        ("GPU", gpu_text),
        ("torch threads", format_value(machine.get("torch_threads"))),
        ("operating system", machine.get("os", "")),
    ]
    versions = provenance.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{name} {version}"
                                           for name, version in versions.items())))
    return [(label, str(value)) for label, value in rows if value not in ("", None)]


def _data_rows(provenance: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, source in (provenance.get("data_sources") or {}).items():
        size = source.get("bytes")
        files = source.get("files")
        rows.append({
            "name": name,
            "checksum": str(source.get("checksum", "")),
            "path": str(source.get("path", "")),
            "size": " ".join(part for part in (
                f"{format_value(files)} files" if files is not None else "",
                f"{size / 1e6:,.1f} MB" if isinstance(size, (int, float)) else "") if part),
            "studies": ", ".join(source.get("studies", [])),
        })
    return rows


def _total_wall_text(data: dict[str, Any]) -> str:
    text = format_seconds(data["provenance"].get("wall_seconds"))
    reused = [study["wall_seconds"] for study in data["studies"] if study["cached"]]
    if len(reused) == 1:
        text += f" (the reused study took {format_seconds(reused[0])} when it ran)"
    elif reused:
        text += (f" (the {len(reused)} reused studies took {format_seconds(sum(reused))} "
                 "when they ran)")
    return text


def _context(data: dict[str, Any], out: Path | None, embed: bool) -> dict[str, Any]:
    provenance = data["provenance"]
    return {
        "data": data,
        "provenance": provenance,
        "studies": _study_views(data, out, embed),
        "provenance_rows": _provenance_rows(provenance),
        "data_rows": _data_rows(provenance),
        "summary": data["summary"],
        "generated": (provenance.get("finished_at") or datetime.now().astimezone().isoformat(
            timespec="seconds")).replace("T", " "),
        "total_wall": _total_wall_text(data),
    }


# ----------------------------------------------------------------------------------------------
# HTML


def _environment() -> jinja2.Environment:
    # autoescape=True for every template: data text is never markup.
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cnnlab.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["seconds"] = format_seconds
    return environment


def render_html(data: dict[str, Any], out_dir: str | os.PathLike | None) -> str:
    """The HTML page for :func:`results_data` output; figures are read from ``out_dir``."""
    out = Path(out_dir) if out_dir is not None else None
    return _environment().get_template("index.html").render(**_context(data, out, embed=True))


# ----------------------------------------------------------------------------------------------
# Markdown


def md_text(text: Any, *, line_start: bool = False) -> str:
    """Escape text for inline Markdown so that it shows literally.

    Escapes what would start markup (``\\ ` * [ ] < | $``, an ``_`` at a word
    edge, ``&`` before an entity name) and folds newlines into spaces; with
    ``line_start=True`` (a paragraph or list item) also a leading ``#``,
    ``>``, ``+``, ``-`` or ``1.``. Ordinary text such as ``val_accuracy`` or
    ``loss < 0.1`` stays as it reads in a terminal.
    """
    text = str(text).replace("\r", " ").replace("\n", " ")
    text = re.sub(r"([\\`*\[\]|$])", r"\\\1", text)
    text = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text)
    text = re.sub(r"&(?=#?\w+;)", "&amp;", text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    if line_start:
        text = re.sub(r"^(\s*)([#>+\-])", r"\1\\\2", text)
        text = re.sub(r"^(\s*\d+)([.)])", r"\1\\\2", text)
    return text


def md_code_block(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def md_link_target(path: str) -> str:
    """A relative path as a Markdown link target: percent-encoded, ``/`` kept."""
    return quote(path, safe="/")


def _md_table(columns: list[str], rows: list[list[str]],
              numeric: list[bool] | None = None) -> str:
    numeric = numeric or [False] * len(columns)
    lines = ["| " + " | ".join(md_text(c) for c in columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: dict[str, Any], out_dir: str | os.PathLike | None = None) -> str:
    """``report.md``: the same content as the page, figures linked by relative path.

    With ``out_dir`` (the report folder) a missing figure file is noted under its link.
    """
    context = _context(data, Path(out_dir) if out_dir is not None else None, embed=False)
    summary = context["summary"]
    provenance = context["provenance"]
    parts = [
        "# cnnlab lab report",
        f"{summary['studies']} studies: {summary['ok']} ok, {summary['failed']} failed"
        + (f", {summary['pending']} not run yet" if summary["pending"] else "")
        + f". Profile {md_text(provenance['profile'])}, seed {provenance['seed']}, "
        f"cnnlab {md_text(provenance['cnnlab_version'])}, wall time "
        f"{context['total_wall']}. Generated {md_text(context['generated'])}.",
        "## Contents",
        "\n".join(f"{index}. [{md_text(study['title'])}](#{study['anchor']}): "
                  f"{study['status_text']}, {study['wall_text']}"
                  for index, study in enumerate(context["studies"], 1))
        + "\n" + f"{len(context['studies']) + 1}. [Provenance](#provenance)",
    ]
    for index, study in enumerate(context["studies"], 1):
        parts += _md_study(index, study)
    parts += _md_provenance(context)
    return "\n\n".join(parts) + "\n"


def _md_study(index: int, study: dict[str, Any]) -> list[str]:
    parts = [
        f'<a id="{study["anchor"]}"></a>',
        f"## {index}. {md_text(study['title'])}",
        f"**Question.** {md_text(study['question'])}",
        f"**Status:** {study['status_text']}; {md_text(study['timing'])}.",
    ]
    if study["status"] == "failed":
        parts.append("**This study failed:**")
        parts.append(md_code_block(study["error"] or "(no message)"))
    if study["findings"]:
        parts.append("### Findings")
        parts.append("\n".join(f"- {md_text(finding, line_start=True)}"
                                for finding in study["findings"]))
    for table in study["tables"]:
        parts.append(f"### {md_text(table['title'])}")
        parts.append(_md_table(table["columns"], [[c["text"] for c in row]
                                                  for row in table["cells"]], table["numeric"]))
        if table.get("caption"):
            parts.append(f"*{md_text(table['caption'])}*")
    for figure in study["figures"]:
        parts.append(f"### {md_text(figure['title'])}")
        parts.append(f"![{md_text(figure['title'])}]({md_link_target(figure['path'])})")
        if figure["problem"]:
            parts.append(f"*{md_text(figure['problem'])}*")
        if figure.get("caption"):
            parts.append(f"*{md_text(figure['caption'])}*")
    if study["status"] != "pending":
        parts.append("### Setup")
        parts.append(_md_table(["setting", "value"], [list(row) for row in study["setup_rows"]]))
    return parts


def _md_provenance(context: dict[str, Any]) -> list[str]:
    parts = ['<a id="provenance"></a>', "## Provenance",
             _md_table(["item", "value"], [list(row) for row in context["provenance_rows"]])]
    parts.append("### Wall time per study")
    parts.append(_md_table(
        ["study", "status", "wall time", "budget"],
        [[study["name"], study["status_text"], study["wall_text"],
          format_seconds(study["budget_seconds"])] for study in context["studies"]]))
    parts.append("### Data sources")
    if context["data_rows"]:
        parts.append(_md_table(
            ["dataset", "checksum", "size", "path", "studies"],
            [[row["name"], row["checksum"], row["size"], row["path"], row["studies"]]
             for row in context["data_rows"]]))
    else:
        parts.append("No study reported its data sources.")
    return parts
