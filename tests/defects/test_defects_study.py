"""The "defects" study end to end on its smoke profile (real data, tiny budget)."""

from __future__ import annotations

import json

import pytest

from cnnlab.lab.study import StudyContext, studies


def test_defects_study_smoke_profile_reports_policies_curves_and_findings(defect_data,
                                                                         tmp_path):
    study = studies()["defects"]
    ctx = StudyContext(out_dir=tmp_path / "defects", profile="smoke",
                       data_root=defect_data.parent, progress=False)
    result = study.run(ctx)

    assert result.name == "defects"
    policy_table = result.tables[0]
    assert [row[0] for row in policy_table.rows] == ["max F1", "recall >= target",
                                                     "precision >= target", "lowest cost",
                                                     "0.5 (accuracy's)"]
    for figure in result.figures:
        assert (ctx.out_dir / figure.path).exists(), figure.path
    numbers = result.numbers["pos_weight"]
    assert 0 <= numbers["test_average_precision"] <= 1
    assert numbers["split"]["test"]["positives"] > 0
    recall_policy = numbers["policies"]["min_recall"]
    assert recall_policy["met_on_test"] in (True, False)
    assert any("escape" in finding for finding in result.findings)
    json.dumps(result.to_dict())  # results.json must be writable


def test_defects_study_is_registered_with_budgets():
    study = studies()["defects"]
    assert study.budget_seconds["cpu"] <= 600
    assert "false alarms" in study.question


@pytest.mark.parametrize("profile", ["smoke", "cpu", "full"])
def test_recipe_sizes_every_profile(profile, tmp_path):
    from cnnlab.lab.defects import recipe

    settings = recipe(StudyContext(out_dir=tmp_path, profile=profile))
    assert "pos_weight" in settings["imbalance"]
    assert settings["min_recall"] == 0.99
