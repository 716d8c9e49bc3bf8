"""The text, speech and tabular studies end to end (smoke profile), and the library API."""

from __future__ import annotations

import json

import pytest

from cnnlab._util import CnnlabError
from cnnlab.lab.study import StudyContext


@pytest.mark.parametrize("name, data", [("text", "mr"), ("speech", "fsdd"), ("tabular", "churn")])
def test_study_runs_in_the_smoke_profile(tmp_path, shared_data, name, data):
    import importlib

    root = shared_data(data).parent
    study = importlib.import_module(f"cnnlab.lab.{name}").STUDY  # only this study's imports
    context = StudyContext(out_dir=tmp_path / name, profile="smoke", data_root=root,
                           device="cpu", progress=False)
    result = study.run(context)

    assert result.name == name and result.tables and result.findings
    for figure in result.figures:
        assert (context.out_dir / figure.path).stat().st_size > 1000
    json.dumps(result.to_dict())  # results.json must be writable
    for table in result.tables:
        assert all(len(row) == len(table.columns) for row in table.rows)
    # a second run reuses every finished training run
    again = study.run(context)
    assert again.numbers == result.numbers


def test_train_text_on_a_users_csv(tmp_path):
    from cnnlab.lab.text import train_text

    rows = ["text,label"]
    for n in range(30):
        rows.append(f"what a wonderful lovely film number {n},pos")
        rows.append(f"what a dreadful boring film number {n},neg")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    result = train_text(path, model="text_cnn_tiny", epochs=3, batch_size=8, lr=1e-2,
                        out_dir=tmp_path / "run", device="cpu")

    assert result["classes"] == ["neg", "pos"] and result["test_size"] == 12
    assert result["baseline"]["accuracy"] == 1.0
    assert 0.0 <= result["cnn"]["accuracy"] <= 1.0
    assert (tmp_path / "run" / "model.safetensors").exists()
    tokens = (tmp_path / "run" / "vocabulary.txt").read_text().split("\n")
    assert tokens[:2] == ["<pad>", "<unk>"] and "wonderful" in tokens
    json.loads((tmp_path / "run" / "results.json").read_text())


def test_train_speech_on_a_folder_with_a_filename_pattern(tmp_path, tone_folder):
    from cnnlab.lab.speech import train_speech

    result = train_speech(tone_folder, pattern=r"(?P<label>[a-z]+)_\d+\.wav", seconds=0.5,
                          model="audio_cnn_tiny", epochs=2, batch_size=8, device="cpu")
    assert result["classes"] == ["high", "low"] and result["test_size"] == 4
    assert result["baseline"]["accuracy"] == 1.0  # pitch separates the tones
    assert len(result["cnn"]["confusion"]) == 2


def test_train_tabular_on_a_users_csv(tmp_path):
    from cnnlab.lab.tabular import train_tabular

    lines = ["id,plan,usage,left"]
    for n in range(80):
        plan = ("basic", "gold", "pro")[n % 3]
        lines.append(f"c{n},{plan},{n % 17},{'yes' if plan == 'basic' else 'no'}")
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    result = train_tabular(path, target="left", drop=["id"], epochs=2, device="cpu",
                           out_dir=tmp_path / "run")

    assert set(result["models"]) == {"mlp", "cnn1d", "hgb"}
    assert result["models"]["hgb"]["roc_auc"] == 1.0
    assert result["preprocessing"]["categorical"]["plan"]
    assert (tmp_path / "run" / "mlp.safetensors").exists()
    with pytest.raises(CnnlabError, match=r"target column 'Left' is not in the header"):
        train_tabular(path, target="Left")
