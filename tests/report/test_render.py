"""The report files: numbers agree, data text is escaped, the page needs nothing outside."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from cnnlab.report import format_value, write_report
from cnnlab.report.render import (
    format_column,
    format_seconds,
    md_text,
    render_markdown,
    results_data,
)

EXPECTED = Path(__file__).parent / "expected"
REGENERATE = os.environ.get("CNNLAB_REGENERATE") == "1"


def read_shown_number(text: str) -> tuple[float, float]:
    """A number as a person reads it on the page, and the rounding its digits allow.

    ``"0.8735" -> (0.8735, 0.00005)``, ``"1,234" -> (1234, 0.5)``,
    ``"2.500e-07" -> (2.5e-07, 5e-11)``; independent of the report's formatter.
    """
    text = text.replace(",", "")
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(text), 0.5 * 10.0 ** (-decimals + int(exponent or 0))


def test_written_files_are_the_three_report_files(sample_lab):
    files = write_report(sample_lab)

    assert sorted(files) == ["index.html", "report.md", "results.json"]
    for path in files.values():
        assert path.parent == sample_lab.out_dir and path.stat().st_size > 0
        assert path.stat().st_mode & 0o044 == 0o044, "report files must be readable by others"


def test_html_tables_show_the_numbers_in_results_json(sample_lab, read_html):
    files = write_report(sample_lab)
    results = json.loads(files["results.json"].read_text())
    page = read_html(files["index.html"].read_text())

    compared = 0
    for study in results["studies"]:
        if study["result"] is None:
            assert study["name"] not in page.studies or page.studies[study["name"]] == []
            continue
        html_tables = page.studies[study["name"]]
        json_tables = study["result"]["tables"]
        assert len(html_tables) == len(json_tables)
        for html_table, json_table in zip(html_tables, json_tables, strict=True):
            html_rows = [row for row in html_table if row]  # the header row has no <td>
            assert len(html_rows) == len(json_table["rows"])
            for html_row, json_row in zip(html_rows, json_table["rows"], strict=True):
                for (text, raw), value in zip(html_row, json_row, strict=True):
                    assert json.loads(raw) == value  # the exact value travels with the cell
                    if isinstance(value, bool) or value is None:
                        assert text == {True: "yes", False: "no", None: "—"}[value]
                    elif isinstance(value, (int, float)):
                        shown, rounding = read_shown_number(text)
                        assert abs(shown - value) <= rounding * (1 + 1e-9), (text, value)
                        if isinstance(value, float) and value != 0:  # two digits kept at least
                            assert rounding <= abs(value) * 0.05, (text, value)
                    elif value in ("NaN", "Infinity", "-Infinity"):
                        assert text == value
                    else:
                        assert text == value
                    compared += 1
    assert compared == 8 + 20


def test_results_json_is_strict_json_with_every_number(sample_lab):
    files = write_report(sample_lab)

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    results = json.loads(files["results.json"].read_text(), parse_constant=reject)
    assert results["summary"] == {"studies": 3, "ok": 2, "failed": 1, "pending": 0}
    shapes = results["studies"][0]["result"]
    assert shapes["numbers"] == {"val_accuracy": {"plain": 0.87345, "aug": 0.9012}}
    awkward_rows = results["studies"][2]["result"]["tables"][0]["rows"]
    assert [row[0] for row in awkward_rows][4:7] == ["NaN", "Infinity", 0.25]
    assert results["studies"][1]["error"].startswith("RuntimeError: ")
    assert results["provenance"]["data_sources"]["shapes-data"]["studies"] == ["shapes"]


def test_results_json_figure_paths_are_relative_to_the_report(sample_lab):
    files = write_report(sample_lab)
    results = json.loads(files["results.json"].read_text())

    paths = [figure["path"] for figure in results["studies"][0]["result"]["figures"]]
    assert paths[0] == "studies/shapes/curves.png"
    assert all((sample_lab.out_dir / path).is_file() for path in paths)


def test_data_text_is_escaped_in_html(sample_lab, hostile, read_html):
    html = write_report(sample_lab)["index.html"].read_text()
    page = read_html(html)

    assert "script" not in page.tags
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    text = "".join(page.text)
    # Title, question, table cell, caption, finding, setup, error, traceback, figure titles...
    assert text.count(hostile) >= 12
    alts = [image["alt"] for image in page.images]
    assert "Bars " + hostile in alts  # attribute values round-trip exactly
    # A link in data text stays text: the only links are the page's own anchors.
    hrefs = [attributes["href"] for tag, attributes in page.attributes if tag == "a"]
    assert hrefs and all(href.startswith("#") for href in hrefs)


def test_page_loads_nothing_from_outside(sample_lab, read_html):
    html = write_report(sample_lab)["index.html"].read_text()
    page = read_html(html)

    assert len(page.images) == 5
    assert all(image["src"].startswith("data:image/png;base64,") for image in page.images)
    assert not {"link", "script", "iframe", "object", "embed"} & set(page.tags)
    for _tag, attributes in page.attributes:
        for name in ("src", "href", "action", "srcset"):
            assert not (attributes.get(name) or "").startswith(("http:", "https:", "//"))
    policy = [a["content"] for t, a in page.attributes
              if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in policy[0]


def test_missing_figure_is_shown_as_a_note_not_an_error(sample_lab):
    (sample_lab.out_dir / "studies" / "shapes" / "heat.png").unlink()

    files = write_report(sample_lab)

    assert "figure file studies/shapes/heat.png is missing" in files["index.html"].read_text()
    assert "figure file studies/shapes/heat.png is missing" in files["report.md"].read_text()


def test_markdown_renders_data_text_as_text(sample_lab, hostile):
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py renders the check")
    markdown = write_report(sample_lab)["report.md"].read_text()

    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(markdown)

    assert "<script" not in rendered and "<b>bold" not in rendered
    assert 'href="http://x"' not in rendered and "<em>em</em>" not in rendered
    assert "&lt;script&gt;alert(" in rendered
    assert "<li>- starts with a dash</li>" in rendered  # not a nested list
    # Figure links are percent-encoded relative paths.
    assert "studies/shapes/grid%20%22%3Cimg%20src%3Dx%3E%22%20%26%20co.png" in markdown


def test_markdown_matches_expected_file(sample_lab):
    """report.md text is pinned; CNNLAB_REGENERATE=1 rewrites the file for review."""
    data = results_data(sample_lab, sample_lab.out_dir)
    markdown = render_markdown(data, sample_lab.out_dir)
    expected = EXPECTED / "report.md"
    if REGENERATE:
        expected.write_text(markdown)
    assert markdown == expected.read_text(), "run with CNNLAB_REGENERATE=1 and review the diff"


@pytest.mark.parametrize("value, text", [
    (None, "—"), (True, "yes"), (False, "no"), (0, "0"), (7, "7"), (1234567, "1,234,567"),
    (-42, "-42"), (0.0, "0"), (0.87346, "0.8735"), (0.5, "0.5000"), (3.14159, "3.142"),
    (123.456, "123.5"), (12345.6, "12,346"), (-0.5, "-0.5000"), (0.001234, "0.001234"),
    (2.5e-7, "2.500e-07"), (3.5e9, "3.500e+09"), (math.nan, "NaN"), (math.inf, "Infinity"),
    (-math.inf, "-Infinity"), ("text", "text"), ([1, 2], "[1, 2]"),
])
def test_format_value(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("values, texts", [
    ([1.0, 0.5], ["1.000", "0.500"]),
    ([50.0, 67.5, None], ["50.00", "67.50", "—"]),
    ([0.61234, 0.6456, 3], ["0.6123", "0.6456", "3"]),
    ([100.0, 0.012], ["100.0", "0.01200"]),  # 0.0 would lose the small value: each on its own
    ([2.5e-7, 0.5], ["2.500e-07", "0.5000"]),
    ([float("nan"), 1.5, "n/a"], ["NaN", "1.500", "n/a"]),
    (["a", "b"], ["a", "b"]),
])
def test_format_column_lines_up_decimals(values, texts):
    assert format_column(values) == texts


@pytest.mark.parametrize("seconds, text", [
    (None, "—"), (0.04, "0.0 s"), (9.94, "9.9 s"), (42.4, "42 s"), (60, "1 min"),
    (754, "12 min 34 s"), (3600, "1 h 0 min"), (3725, "1 h 2 min"),
])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("text, escaped", [
    ("val_accuracy", "val_accuracy"),
    ("loss < 0.1 & falling", "loss < 0.1 & falling"),
    ("<script>", "\\<script>"),
    ("a | b", "a \\| b"),
    ("*bold* and [link](x)", "\\*bold\\* and \\[link\\](x)"),
    ("_private", "\\_private"),
    ("&amp; entity", "&amp;amp; entity"),
    ("cost $x$", "cost \\$x\\$"),
    ("two\nlines", "two lines"),
])
def test_md_text_escapes_only_what_would_be_markup(text, escaped):
    assert md_text(text) == escaped


@pytest.mark.parametrize("text, escaped", [
    ("# heading", "\\# heading"), ("- item", "\\- item"), ("1. item", "1\\. item"),
    ("> quote", "\\> quote"), ("plain", "plain"),
])
def test_md_text_at_line_start_escapes_block_markers(text, escaped):
    assert md_text(text, line_start=True) == escaped
