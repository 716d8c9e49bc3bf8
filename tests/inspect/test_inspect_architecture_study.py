"""The "architecture" study runs end to end (smoke profile) and its findings carry the numbers."""

from __future__ import annotations

import json

from cnnlab.lab.study import StudyContext, studies


def test_architecture_study_smoke(tmp_path):
    study = studies()["architecture"]
    result = study.run(StudyContext(out_dir=tmp_path, profile="smoke", progress=False))

    assert [t.title.split(":")[0] for t in result.tables][:2] == [
        "Parameters, multiply-adds and receptive fields of classic networks",
        "What weight sharing saves"]
    for figure in result.figures:
        assert (tmp_path / figure.path).read_bytes()[:4] == b"\x89PNG"

    numbers = result.numbers
    # Two 3x3 layers of 64 channels: 2 * 64 * (9 * 64 + 1); one 5x5: 64 * (25 * 64 + 1).
    assert numbers["kernel_2 x conv3x3"] == {"field": 5, "params": 73_856,
                                              "macs": 231_211_008, "nonlinearities": 2}
    assert numbers["kernel_1 x conv5x5"]["params"] == 102_464
    assert numbers["stage_ResNet-18_layer4"]["field"] == 435
    assert numbers["stage_ResNet-50_layer4"]["field"] == 427
    assert numbers["effective_field"]["mass_inside_theoretical"] > 0.999
    assert any("73,856 parameters instead of 102,464 (28% fewer)" in f for f in result.findings)
    json.dumps(result.to_dict())  # the lab stores it as results.json
