"""The five design studies end to end in the smoke profile, on synthetic CIFAR-shaped data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

DESIGN_STUDIES = ["augmentation", "downsampling", "activations", "robustness", "explanations"]


@pytest.fixture(scope="module")
def lab(synthetic_cifar, tmp_path_factory):
    """The five studies in the smoke profile, in the lab's order and folder layout.

    The studies are called directly (the lab runner and its report have their
    own tests), so the slow part is only the studies' own work.
    """
    import importlib
    import os

    from cnnlab.lab.study import StudyContext

    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("CNNLAB_CACHE")
    os.environ["CNNLAB_CACHE"] = str(cache)  # a private decode cache for the synthetic set
    out = tmp_path_factory.mktemp("lab")
    results = {}
    try:
        for name in DESIGN_STUDIES:
            study = importlib.import_module(f"cnnlab.lab.{name}").STUDY
            context = StudyContext(out_dir=out / "studies" / name, profile="smoke",
                                   data_root=synthetic_cifar, device="cpu", progress=False)
            results[name] = study.run(context).to_dict()
    finally:
        if previous is None:
            os.environ.pop("CNNLAB_CACHE", None)
        else:
            os.environ["CNNLAB_CACHE"] = previous
    return results, out


def _entry(lab, name):
    results, out = lab
    return results[name], out / "studies" / name


@pytest.mark.parametrize("name", DESIGN_STUDIES)
def test_study_returns_tables_figures_and_findings_from_its_numbers(lab, name):
    result, folder = _entry(lab, name)
    assert result["tables"] and all(table["rows"] for table in result["tables"])
    assert result["findings"] and result["numbers"]
    for figure in result["figures"]:
        assert (folder / figure["path"]).stat().st_size > 1000, figure["path"]
    for table in result["tables"]:
        for row in table["rows"]:
            assert len(row) == len(table["columns"])
            assert not any(isinstance(v, float) and math.isnan(v) for v in row), row
    json.dumps(result)  # plain data, as the report needs


def test_augmentation_settings_train_what_they_claim(lab):
    result, folder = _entry(lab, "augmentation")
    runs = {(r["model"], r["setting"]): r for r in result["numbers"]["runs"]}
    none = runs[("LeNet-5", "none")]
    assert runs[("LeNet-5", "self-concat")]["images_per_epoch"] == 2 * none["images_per_epoch"]
    assert runs[("LeNet-5", "augment-concat")]["images_per_epoch"] == \
        2 * none["images_per_epoch"]
    assert runs[("LeNet-5", "double-epochs")]["epochs"] == 2 * none["epochs"]
    checks = {c["what"].split(":")[0]: c["verdict"] for c in result["numbers"]["sanity_checks"]}
    assert checks["x + x"] == "copies"
    assert checks["augmented copy (keras preset, drawn once)"] == "ok"
    assert checks["preset with all ranges zero"] == "unchanged"
    summary = json.loads((folder / "runs" / "lenet-keras" / "summary.json").read_text())
    assert summary["augment_check"]["verdict"] == "ok"


def test_robustness_and_explanations_reuse_the_augmentation_runs(lab):
    robustness, robustness_folder = _entry(lab, "robustness")
    assert all(source["reused"] for source in robustness["numbers"]["sources"].values())
    assert not (robustness_folder / "runs").exists()
    explanations, _ = _entry(lab, "explanations")
    assert explanations["setup"]["reused"] is True


def test_downsampling_measures_architecture_with_inspect(lab):
    result, _ = _entry(lab, "downsampling")
    runs = {r["downsample"]: r for r in result["numbers"]["runs"]}
    assert runs["max"]["params"] == runs["none"]["params"] == runs["stride"]["params"]
    assert runs["stride"]["macs"] < runs["max"]["macs"] < runs["none"]["macs"]
    assert runs["none"]["receptive_field"] < runs["max"]["receptive_field"]


def test_activations_record_gradient_verdicts(lab):
    result, _ = _entry(lab, "activations")
    for run in result["numbers"]["runs"]:
        assert run["verdicts"], run["key"]
        assert run["monitor_samples"] >= 1


def test_a_different_recipe_is_not_reused(tmp_path):
    from cnnlab.lab.augmentation import _stored_result

    run_dir = tmp_path / "lenet-none"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"x")
    (run_dir / "result.json").write_text(json.dumps({"config": {"epochs": 6},
                                                     "result": {"ok": 1}}))
    assert _stored_result(run_dir, {"epochs": 6}) == {"ok": 1}
    assert _stored_result(run_dir, {"epochs": 7}) is None
    assert _stored_result(Path(tmp_path / "missing"), {"epochs": 6}) is None
