"""``cnnlab inspect``: tables, JSON, CSV, layer names, pictures and errors from the command line.

Table text is pinned in tests/inspect/expected/; CNNLAB_REGENERATE=1 rewrites those files
for review.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from cnnlab.cli.main import main

EXPECTED = Path(__file__).parent / "expected"
REGENERATE = os.environ.get("CNNLAB_REGENERATE") == "1"


def _pinned(name: str, text: str) -> None:
    # The analysis time varies from run to run; everything else is deterministic.
    text = "\n".join(line for line in text.splitlines() if "analysed in" not in line) + "\n"
    path = EXPECTED / name
    if REGENERATE:
        path.write_text(text)
    assert text == path.read_text(), "run with CNNLAB_REGENERATE=1 and review the diff"


def test_spec_table_with_symbolic_size(capsys):
    assert main(["inspect", "conv3x3-16, conv3x3-32", "--input", "3xNxN"]) == 0
    _pinned("spec_conv3x3_16_32_symbolic.txt", capsys.readouterr().out)


def test_spec_table_with_given_size(capsys):
    assert main(["inspect", "conv3x3-16, conv3x3-32", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert "5,088" in out and "794.2 times" in out
    _pinned("spec_conv3x3_16_32_at_32.txt", out)


def test_model_table(capsys):
    assert main(["inspect", "torchvision.models:resnet18", "--input", "3x64x64"]) == 0
    out = capsys.readouterr().out
    assert "11,689,512" in out
    _pinned("resnet18_at_64.txt", out)


def test_json_output_holds_every_row_and_the_totals(capsys):
    assert main(["inspect", "torchvision.models:resnet18", "--input", "3x224x224",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == 11_689_512
    layer4 = next(row for row in data["layers"] if row["name"] == "layer4.1.relu#2")
    assert layer4["receptive_field"] == [435, 435] and layer4["jump"] == [32, 32]
    assert data["layers"][0]["macs"] == 64 * 112 * 112 * 3 * 49


def test_csv_output_to_a_file(tmp_path, capsys):
    out = tmp_path / "layers.csv"
    assert main(["inspect", "torchvision.models:resnet18", "--input", "3x64x64",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows[0]["name"] == "conv1" and rows[0]["rf_H"] == "7" and rows[0]["jump_W"] == "2"
    assert sum(int(row["trainable_params"]) for row in rows) == 11_689_512


def test_layer_names_for_transfer_learning(capsys):
    assert main(["inspect", "resnet18", "--layers"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names[:3] == ["conv1", "bn1", "relu"] and "layer3" in names and "layer4.1.conv2" in names


def test_draw_writes_a_picture_and_reports_the_fields(tmp_path, capsys):
    picture = tmp_path / "field.png"
    assert main(["inspect", "torchvision.models:resnet18", "--input", "3x64x64", "--draw",
                 str(picture), "--layer", "layer1", "--samples", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["receptive_field"] == [43.0, 43.0]
    assert data["mass_inside_theoretical"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["inspect", "resnet19"], "Did you mean resnet18"),
    (["inspect", "conv3x3-16/q2"], "option 'q'"),
    (["inspect", "vgg16", "--input", "3x16x16"], "layer 'features.30' (MaxPool2d)"),
    (["inspect", "resnet18", "--input", "3xNxN"], "only for a layer spec"),
    (["inspect"], "name a MODEL"),
    (["inspect", "resnet18", "--draw", "x.png", "--layer", "layer33"], "Did you mean layer3"),
])
def test_errors_print_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
