"""train_segmentation writes a run that evaluate_segmentation reads; the study runs end to end."""

import json

import pytest

from cnnlab._util import CnnlabError
from cnnlab.lab.segmentation import SIZE_BINS, claim_verdict
from cnnlab.lab.study import StudyContext, studies
from cnnlab.train import TrainConfig
from cnnlab.train.segmentation import (
    SegmentationSpec,
    evaluate_segmentation,
    train_segmentation,
    train_segmentation_spec,
)


def test_train_then_evaluate_gives_the_same_metrics(tmp_path):
    run_dir = tmp_path / "run"
    result = train_segmentation("synthetic", "dice", run_dir, epochs=1, size=32,
                                synthetic_count=40, batch_size=8, device="cpu")
    trained = result.summary["segmentation"]
    assert trained["loss"] == "dice" and trained["images"] == 8
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "segment" and config["segmentation"]["loss"] == "dice"
    evaluated = evaluate_segmentation(run_dir, device="cpu")
    for key in ("iou_mean", "dice_mean", "boundary_f_mean", "area_ratio_set", "pixel_accuracy"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6, nan_ok=True)
    assert set(evaluated["iou_at_thresholds"]) == {"0.3", "0.4", "0.5", "0.6", "0.7"}
    assert json.loads((run_dir / "segmentation_metrics.json").read_text())["loss"] == "dice"


def test_spec_form_resumes_from_the_checkpoint(tmp_path):
    spec = SegmentationSpec(data="synthetic", loss="lovasz", size=32, synthetic_count=24,
                            augment="flips")
    first = train_segmentation_spec(spec, TrainConfig(epochs=1, batch_size=8, device="cpu"),
                                    tmp_path)
    assert len(first.history) == 1
    second = train_segmentation_spec(spec, TrainConfig(epochs=2, batch_size=8, device="cpu"),
                                     tmp_path, resume=True)
    assert [row["epoch"] for row in second.history] == [1, 2]
    assert second.summary["segmentation"]["loss"] == "lovasz"


def test_evaluate_rejects_a_folder_that_is_not_a_segmentation_run(tmp_path):
    with pytest.raises(CnnlabError, match="no config.json"):
        evaluate_segmentation(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"task": "classify"}))
    with pytest.raises(CnnlabError, match="not a segmentation run"):
        evaluate_segmentation(tmp_path)


def bins_with(ratios: dict[str, tuple[float, float, float]]):
    rest = [{"images": 5, "iou": 0.8, "area_ratio": 1.0, "ratio_low": 0.9, "ratio_high": 1.1}
            for _ in SIZE_BINS[1:]]
    return {loss: [{"images": 5, "iou": 0.5, "area_ratio": r, "ratio_low": low,
                    "ratio_high": high}] + rest for loss, (r, low, high) in ratios.items()}


@pytest.mark.parametrize("ratios,verdict", [
    ({"bce": (0.6, 0.5, 0.7), "iou": (0.95, 0.9, 1.0), "dice": (1.05, 1.0, 1.1),
      "lovasz": (0.9, 0.8, 1.0)}, "held"),
    ({"bce": (0.96, 0.94, 0.98), "iou": (1.01, 0.99, 1.03), "dice": (1.02, 1.0, 1.04),
      "lovasz": (0.99, 0.97, 1.01)}, "held weakly"),
    ({"bce": (0.97, 0.9, 1.05), "iou": (0.99, 0.9, 1.1), "dice": (1.0, 0.9, 1.1),
      "lovasz": (1.0, 0.9, 1.1)}, "did not hold"),
    ({"bce": (1.2, 1.1, 1.3), "iou": (1.5, 1.4, 1.6), "dice": (1.3, 1.2, 1.4),
      "lovasz": (1.25, 1.2, 1.3)}, "did not hold"),
    ({"bce": (0.6, 0.5, 0.7), "iou": (0.9, 0.8, 1.0), "dice": (0.5, 0.4, 0.6),
      "lovasz": (1.0, 0.9, 1.1)}, "partly"),
    # Closer than BCE but measurably off itself (too large) does not count as right.
    ({"bce": (0.974, 0.96, 0.99), "iou": (1.017, 1.003, 1.03), "dice": (1.025, 1.01, 1.04),
      "lovasz": (1.0, 0.98, 1.02)}, "partly"),
])
def test_claim_verdict_follows_the_stated_rule(ratios, verdict):
    assert claim_verdict(bins_with(ratios))[0] == verdict


@pytest.mark.slow
def test_study_smoke_profile_runs_end_to_end(tmp_path):
    study = studies()["segmentation"]
    result = study.run(StudyContext(out_dir=tmp_path, profile="smoke", device="cpu",
                                    progress=False))
    assert result.name == "segmentation"
    titles = [table.title for table in result.tables]
    assert "Synthetic shapes: predicted / true area by object size" in titles
    assert any(finding.startswith("Claim 'BCE gets the size") for finding in result.findings)
    assert result.numbers["claim_verdict"] in {"held", "held weakly", "did not hold", "partly",
                                             "undecided"}
    for figure in result.figures:
        assert (tmp_path / figure.path).stat().st_size > 1000
