"""The lab runner: order, failures, caching, resumption, the report, and ``cnnlab lab``."""

from __future__ import annotations

import json
from collections import Counter
from html.parser import HTMLParser

import pytest

from cnnlab._util import CnnlabError
from cnnlab.cli.main import main
from cnnlab.lab import runner
from cnnlab.lab.study import Figure, Study, StudyResult, Table
from cnnlab.report import figures

HOSTILE = "<script>alert(1)</script> & \"run\" 'one'"


class Interrupt(KeyboardInterrupt):
    """Stands in for Ctrl-C in the middle of a study."""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def calls() -> Counter:
    return Counter()


@pytest.fixture
def catalog(calls):
    """Three fake studies (one with a table and a figure, one that fails, one tiny) and a
    switch that makes the tiny one stand in for Ctrl-C."""
    behaviour = {"interrupt": False}

    def bars(ctx):
        calls["bars"] += 1
        figures.save_bar({"plain": 0.61, "augmented": 0.64}, ctx.out_dir / "bars & <x>.png")
        accuracy = {"plain": 0.61234, "augmented": 0.6456}
        return StudyResult(
            name="bars", title="Bars", question="Does augmentation help?",
            setup={"data": "synthetic", "seed": ctx.seed, "profile": ctx.profile,
                   "data_checksums": {"shapes": "sha256:" + "b" * 64}},
            tables=[Table("Validation accuracy", ["run", "val accuracy", "epochs"],
                          [[HOSTILE, accuracy["plain"], 3], ["augmented", accuracy["augmented"],
                                                              3]])],
            figures=[Figure("Accuracy by run " + HOSTILE, "bars & <x>.png")],
            findings=[f"Augmentation changed validation accuracy by "
                      f"{100 * (accuracy['augmented'] - accuracy['plain']):+.1f} points."],
            numbers={"val_accuracy": accuracy},
        )

    def broken(ctx):
        calls["broken"] += 1
        raise ValueError("class name " + HOSTILE + " is not in the data")

    def tiny(ctx):
        calls["tiny"] += 1
        if behaviour["interrupt"]:
            raise Interrupt()
        return StudyResult(name="tiny", title="Tiny", question="Is one one?", setup={},
                           tables=[Table("One", ["x"], [[1.0]])], numbers={"x": 1.0})

    studies = {
        "bars": Study("bars", "Bars", "Does augmentation help?",
                      {"smoke": 5, "cpu": 60, "full": 600}, bars),
        "broken": Study("broken", "Broken", "What if a study fails?",
                        {"smoke": 5, "cpu": 60, "full": 600}, broken),
        "tiny": Study("tiny", "Tiny", "Is one one?", {"smoke": 1, "cpu": 10, "full": 10}, tiny),
    }
    return studies, behaviour


def run(catalog, tmp_path, **options):
    studies, _ = catalog
    options.setdefault("profile", "smoke")
    return runner.run_lab(out_dir=tmp_path / "report", progress=False, catalog=studies, **options)


def test_runs_every_study_in_catalog_order_and_records_the_failure(catalog, tmp_path, calls):
    lab = run(catalog, tmp_path)

    assert [entry.name for entry in lab.studies] == ["bars", "broken", "tiny"]
    assert [entry.status for entry in lab.studies] == ["ok", "failed", "ok"]
    assert calls == Counter(bars=1, broken=1, tiny=1)
    assert lab.exit_code == 1 and not lab.ok
    broken = lab.study("broken")
    assert broken.error.startswith("ValueError: class name <script>")
    assert "Traceback" in broken.traceback and broken.result is None
    assert lab.study("bars").wall_seconds > 0
    assert lab.study("bars").budget_seconds == 5


def test_named_studies_run_in_catalog_order(catalog, tmp_path, calls):
    lab = run(catalog, tmp_path, names=["tiny", "bars"])

    assert [entry.name for entry in lab.studies] == ["bars", "tiny"]
    assert lab.exit_code == 0 and "broken" not in calls


def test_unknown_study_name_suggests_close_matches(catalog):
    studies, _ = catalog

    with pytest.raises(CnnlabError, match=r"'bar' \(did you mean bars\?\).*Known studies: bars"):
        runner.select_studies(["bar"], studies)
    with pytest.raises(CnnlabError, match="'zzz' \\(no close match\\)"):
        runner.select_studies(["tiny", "zzz"], studies)


def test_finished_study_is_reused_and_failed_study_runs_again(catalog, tmp_path, calls):
    run(catalog, tmp_path)

    lab = run(catalog, tmp_path)

    assert calls == Counter(bars=1, broken=2, tiny=1)
    assert lab.study("bars").cached and lab.study("bars").status == "ok"
    assert lab.study("bars").result["numbers"] == {"val_accuracy": {"plain": 0.61234,
                                                                    "augmented": 0.6456}}
    assert not lab.study("broken").cached
    assert lab.study("bars").versions["cnnlab"]  # the versions it ran with, kept on reuse


def test_fresh_runs_every_study_again(catalog, tmp_path, calls):
    run(catalog, tmp_path)

    lab = run(catalog, tmp_path, fresh=True)

    assert calls == Counter(bars=2, broken=2, tiny=2)
    assert not any(entry.cached for entry in lab.studies)


@pytest.mark.parametrize("change", [{"seed": 1}, {"profile": "cpu"}])
def test_another_seed_or_profile_does_not_reuse_results(catalog, tmp_path, calls, change):
    run(catalog, tmp_path, names=["tiny"])

    run(catalog, tmp_path, names=["tiny"], **change)

    assert calls["tiny"] == 2


def test_interrupted_lab_resumes_where_it_stopped(catalog, tmp_path, calls):
    _, behaviour = catalog
    behaviour["interrupt"] = True
    with pytest.raises(KeyboardInterrupt):
        run(catalog, tmp_path)

    # The report written after each finished study shows the unfinished one as pending.
    partial = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [s["status"] for s in partial["studies"]] == ["ok", "failed", "pending"]

    behaviour["interrupt"] = False
    lab = run(catalog, tmp_path)

    assert calls == Counter(bars=1, broken=2, tiny=2)
    assert [entry.status for entry in lab.studies] == ["ok", "failed", "ok"]


def test_study_returning_the_wrong_type_fails_clearly(tmp_path):
    wrong = Study("wrong", "Wrong", "?", {"smoke": 1, "cpu": 1, "full": 1}, lambda ctx: {"a": 1})

    lab = runner.run_lab(out_dir=tmp_path, profile="smoke", progress=False,
                         catalog={"wrong": wrong})

    assert lab.study("wrong").error == ("TypeError: study wrong returned dict, "
                                        "expected a StudyResult")


@pytest.mark.parametrize("options, message", [
    ({"profile": "huge"}, "profile 'huge' is unknown"),
    ({"data_root": "/no/such/folder"}, "--data-root '/no/such/folder' is not a folder"),
    ({"device": "tpu:9"}, "not a device name"),
])
def test_bad_options_fail_before_any_study_runs(catalog, tmp_path, calls, options, message):
    with pytest.raises(CnnlabError, match=message):
        run(catalog, tmp_path, **options)
    assert not calls


def test_default_profile_follows_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.default_profile() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runner.default_profile() == "full"


def test_report_states_provenance(catalog, tmp_path):
    lab = run(catalog, tmp_path, command="cnnlab lab --profile smoke")

    results = json.loads(lab.files["results.json"].read_text())
    provenance = results["provenance"]
    assert provenance["command"] == "cnnlab lab --profile smoke"
    assert provenance["profile"] == "smoke" and provenance["seed"] == 0
    assert provenance["device"] in ("cpu (auto)", "cuda (auto)", "mps (auto)")
    assert provenance["cnnlab_version"] and provenance["machine"]["cpu_cores"] >= 1
    assert provenance["data_sources"] == {"shapes": {"checksum": "sha256:" + "b" * 64,
                                                     "studies": ["bars"]}}
    assert [s["wall_seconds"] > 0 for s in results["studies"]] == [True, True, True]


class _Cells(HTMLParser):
    """(study, text, data-value) of every data-table cell on the page."""

    def __init__(self):
        super().__init__()
        self.cells, self.study, self.cell, self.value, self.in_data = [], None, None, None, False
        self.tags = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.study = attributes.get("data-study")
        elif tag == "table":
            self.in_data = "data" in (attributes.get("class") or "") and bool(self.study)
        elif tag == "td" and self.in_data:
            self.cell, self.value = [], attributes.get("data-value")

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.cells.append((self.study, "".join(self.cell), self.value))
            self.cell = None
        elif tag == "table":
            self.in_data = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_html_tables_agree_with_results_json(catalog, tmp_path):
    lab = run(catalog, tmp_path)
    results = json.loads(lab.files["results.json"].read_text())
    page = _Cells()
    page.feed(lab.files["index.html"].read_text())

    expected = [(study["name"], cell) for study in results["studies"] if study["result"]
                for table in study["result"]["tables"] for row in table["rows"] for cell in row]
    assert len(page.cells) == len(expected) == 7
    for (study, text, raw), (name, value) in zip(page.cells, expected, strict=True):
        assert study == name and json.loads(raw) == value
        if isinstance(value, float):
            decimals = len(text.partition(".")[2])
            assert abs(float(text) - value) <= 0.5 * 10.0 ** -decimals * (1 + 1e-9)
        else:
            assert text == str(value)


def test_data_text_is_escaped_in_html_and_markdown(catalog, tmp_path):
    lab = run(catalog, tmp_path)
    html = lab.files["index.html"].read_text()
    markdown = lab.files["report.md"].read_text()
    page = _Cells()
    page.feed(html)

    assert "script" not in page.tags and "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;run&#34;") >= 4
    assert "\\<script>alert(1)\\</script>" in markdown
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py renders the check")
    assert "<script" not in markdown_it.MarkdownIt("commonmark").enable("table").render(markdown)
    assert "studies/bars/bars%20%26%20%3Cx%3E.png" in markdown


def test_cli_lists_studies_with_budgets(catalog, monkeypatch, capsys):
    studies, _ = catalog
    monkeypatch.setattr(runner, "studies", lambda: studies)

    assert main(["lab", "--list"]) == 0

    out = capsys.readouterr().out
    for name in studies:
        assert name in out
    assert "1 min" in out and "10 min" in out  # cpu and full budgets of bars
    assert "3 studies" in out


def test_cli_rejects_unknown_names_before_running(catalog, monkeypatch, capsys, calls):
    studies, _ = catalog
    monkeypatch.setattr(runner, "studies", lambda: studies)

    assert main(["lab", "tiny", "brokn"]) == 2

    assert "did you mean broken?" in capsys.readouterr().err
    assert not calls


def test_cli_runs_studies_and_exits_nonzero_when_one_failed(catalog, monkeypatch, capsys,
                                                            tmp_path):
    studies, _ = catalog
    monkeypatch.setattr(runner, "studies", lambda: studies)
    out = tmp_path / "my report"

    assert main(["lab", "--profile", "smoke", "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "study broken failed: ValueError" in captured.err
    assert str(out / "index.html") in captured.out

    assert main(["lab", "tiny", "bars", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["command"] == (
        f"cnnlab lab tiny bars --profile smoke --out '{out}' --quiet")


def test_datasets_a_study_reads_are_checksummed_into_the_report(tmp_path, monkeypatch):
    from cnnlab.data import find_dataset
    from cnnlab.report.provenance import dataset_checksum

    data = tmp_path / "data" / "tabular-churn"
    data.mkdir(parents=True)
    (data / "churn.csv").write_text("tenure,churn\n1,yes\n")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "data"))

    def reads_churn(ctx):
        find_dataset("churn")
        return StudyResult(name="reader", title="Reader", question="?", setup={},
                           tables=[Table("One", ["x"], [[1.0]])])

    catalog = {"reader": Study("reader", "Reader", "?", {"smoke": 1, "cpu": 1, "full": 1},
                               reads_churn)}
    lab = runner.run_lab(out_dir=tmp_path / "report", progress=False, catalog=catalog,
                         profile="smoke")

    row = lab.provenance.data_sources["churn"]
    assert row["checksum"] == dataset_checksum(data, cache=False)
    assert row["files"] == 1 and row["studies"] == ["reader"]
    stored = json.loads((tmp_path / "report" / "results.json").read_text())
    assert stored["provenance"]["data_sources"]["churn"]["checksum"] == row["checksum"]
    assert row["checksum"] in (tmp_path / "report" / "index.html").read_text()
