"""The "transfer" study end to end in its smoke profile (real CIFAR-10, tiny budget)."""

from __future__ import annotations

import json

import pytest

from cnnlab.lab.study import StudyContext


@pytest.mark.slow
def test_transfer_study_smoke_profile_reports_every_row_and_reuses_its_runs(shared_data,
                                                                          tmp_path):
    from cnnlab.lab.transfer import ROWS, STUDY

    context = StudyContext(out_dir=tmp_path / "transfer", profile="smoke",
                           data_root=shared_data, device="cpu", progress=False)
    result = STUDY.run(context)

    few_label = result.tables[0]
    names = [row[0] for row in few_label.rows]
    assert names[:5] == [ROWS[k] for k in ("lenet5", "scratch", "frozen_linear", "frozen_mlp",
                                           "fine_tuned")]
    for table in result.tables:
        assert all(len(row) == len(table.columns) for row in table.rows)
    assert all(0.0 <= row[1] <= 1.0 for row in few_label.rows)
    assert "ImageNet" in result.findings[-2]  # says whether ImageNet weights were used
    assert "imagenet_weights" in result.setup
    for figure in result.figures:
        assert (context.out_dir / figure.path).stat().st_size > 1000
    json.dumps(result.to_dict())
    numbers = result.numbers["few_label"]["10"]
    assert numbers["frozen_linear"]["cache_used"] and not numbers["fine_tuned"]["cache_used"]
    assert numbers["frozen_mlp"]["layer"] == "blocks.1"
    again = STUDY.run(context)
    assert again.numbers == result.numbers
