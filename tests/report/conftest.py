"""A hand-made lab result with real figures, and a parser for the report's HTML tables."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cnnlab.report import LabResult, Provenance, StudyEntry, figures

# Text that would be markup if it were not escaped, in every place data text appears.
HOSTILE = "<script>alert('x')</script> & \"quoted\" <b>bold</b> $math$ | [link](http://x) *em*"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep checksum caches out of the user's home."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


GRID_NAME = 'grid "<img src=x>" & co.png'


def draw_figures(folder: Path) -> None:
    """One figure of each kind, with hostile labels, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.1 / epoch,
                "train_accuracy": 1 - 0.5 / epoch, "val_accuracy": 0.9 - 0.5 / epoch}
               for epoch in range(1, 6)]
    figures.save_curves({"plain": history, HOSTILE: history[::-1]}, folder / "curves.png")
    figures.save_bar({"a": 0.5, HOSTILE: 0.75}, folder / "bar.png", ylabel="accuracy")
    figures.save_heatmap(np.logspace(-6, 1, 12).reshape(3, 4), ["l1", "l2", HOSTILE],
                         list("abcd"), folder / "heat.png")
    figures.save_confusion(np.array([[5, 1], [2, 7]]), ["cat", HOSTILE], folder / "conf.png")
    figures.save_image_grid(np.zeros((4, 3, 8, 8), np.uint8), folder / GRID_NAME, nrow=2,
                            titles=["a", "b", "c", HOSTILE])


def make_lab(out: Path, figures_folder: Path) -> LabResult:
    """Three studies (ok with every figure kind, failed, reused with awkward numbers).

    The figures are copied from ``figures_folder`` (see :func:`draw_figures`).
    """
    shutil.copytree(figures_folder, out / "studies" / "shapes")
    grid_name = GRID_NAME
    shapes = {
        "name": "shapes", "title": "Shapes " + HOSTILE, "question": "Why " + HOSTILE + "?",
        "setup": {"data": "synthetic " + HOSTILE, "model": "lenet5", "epochs": 5,
                  "data_checksums": {"shapes-data": {"checksum": "sha256:" + "a" * 64,
                                                     "files": 12, "bytes": 3400,
                                                     "path": "/data/" + HOSTILE}}},
        "tables": [{"title": "Accuracy " + HOSTILE,
                    "columns": ["run", "val accuracy", "parameters", "note"],
                    "rows": [[HOSTILE, 0.87345, 61706, "ok"],
                             ["aug", 0.9012, 1234567, None]],
                    "caption": "caption " + HOSTILE}],
        "figures": [
            {"title": "Curves", "path": "curves.png", "caption": "dashed: train"},
            {"title": "Bars " + HOSTILE, "path": "bar.png", "caption": ""},
            {"title": "Heat", "path": "heat.png", "caption": ""},
            {"title": "Confusion", "path": "conf.png", "caption": ""},
            {"title": "Grid", "path": grid_name, "caption": "file name " + HOSTILE},
        ],
        "findings": ["Augmentation gains 3.0 points " + HOSTILE, "- starts with a dash"],
        "numbers": {"val_accuracy": {"plain": 0.87345, "aug": 0.9012}},
        "wall_seconds": 12.5,
    }
    awkward = {
        "name": "awkward", "title": "Awkward numbers", "question": "Do numbers survive?",
        "setup": {"seed": 3},
        "tables": [{"title": "Numbers", "columns": ["value", "kind"],
                    "rows": [[0.0, "zero"], [-0.5, "negative"], [1e-7, "tiny"],
                             [3.5e9, "huge"], [float("nan"), "nan"], [float("inf"), "inf"],
                             [np.float32(0.25), "numpy"], [True, "bool"], [7, "int"],
                             [123456.789, "thousands"]],
                    "caption": ""}],
        "figures": [], "findings": [], "numbers": {"nan": float("nan")}, "wall_seconds": 0.2,
    }
    provenance = Provenance(
        cnnlab_version="0.1.0", command="cnnlab lab --out " + HOSTILE, profile="smoke", seed=0,
        started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:01:00+00:00",
        wall_seconds=60.0,
        machine={"cpu": "Test CPU", "cpu_cores": 2, "memory_gib": 4.0, "gpus": [],
                 "os": "Linux"},
        versions={"python": "3.11", "torch": "2.x"},
        data_sources={"shapes-data": {**shapes["setup"]["data_checksums"]["shapes-data"],
                                      "studies": ["shapes"]}},
    )
    studies = [
        StudyEntry("shapes", shapes["title"], shapes["question"], "ok", budget_seconds=60,
                   wall_seconds=12.5, folder="studies/shapes", result=shapes),
        StudyEntry("broken", "Broken " + HOSTILE, "Does it fail well?", "failed",
                   budget_seconds=30, wall_seconds=0.1, folder="studies/broken",
                   error="RuntimeError: " + HOSTILE, traceback="Traceback " + HOSTILE),
        StudyEntry("awkward", awkward["title"], awkward["question"], "ok", budget_seconds=10,
                   wall_seconds=0.2, cached=True, folder="studies/awkward", result=awkward),
    ]
    return LabResult(studies=studies, provenance=provenance, out_dir=out)


@pytest.fixture(scope="session")
def figures_folder(tmp_path_factory) -> Path:
    """Drawing takes seconds on a busy machine: draw once, copy into each test's folder."""
    folder = tmp_path_factory.mktemp("figures") / "shapes"
    draw_figures(folder)
    return folder


@pytest.fixture
def sample_lab(tmp_path, figures_folder) -> LabResult:
    return make_lab(tmp_path / "report", figures_folder)


@pytest.fixture
def hostile() -> str:
    return HOSTILE


class TableReader(HTMLParser):
    """Cells of every ``table.data`` in each study section (text, data-value), plus every tag,
    attribute and text node of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.studies: dict[str, list[list[list[tuple[str, str | None]]]]] = {}
        self.images: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._study: str | None = None
        self._cell: list[str] | None = None
        self._in_data_table = False
        self._value: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        self.attributes.append((tag, attributes))
        if tag == "section" and attributes.get("data-study"):
            self._study = attributes["data-study"]
            self.studies[self._study] = []
        elif tag == "table" and self._study and "data" in (attributes.get("class") or ""):
            self.studies[self._study].append([])
            self._in_data_table = True
        elif tag == "tr" and self._in_data_table:
            self.studies[self._study][-1].append([])
        elif tag == "td" and self._in_data_table:
            self._cell, self._value = [], attributes.get("data-value")
        elif tag == "img":
            self.images.append(attributes)

    def handle_endtag(self, tag):
        if tag == "section":
            self._study = None
        elif tag == "table":
            self._in_data_table = False
        elif tag == "td" and self._cell is not None:
            self.studies[self._study][-1][-1].append(("".join(self._cell), self._value))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def read_html():
    """A function that parses report HTML into a :class:`TableReader`."""

    def read(html: str) -> TableReader:
        reader = TableReader()
        reader.feed(html)
        return reader

    return read
