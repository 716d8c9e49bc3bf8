"""The fit verdict on constructed learning curves."""

from cnnlab.diagnose import GOOD_FIT, OVERFITTING, UNDERFITTING, fit_verdict


def history(fit_accuracy, val_accuracy, val_loss):
    return [{"epoch": i + 1, "fit_accuracy": f, "val_accuracy": v, "val_loss": loss}
            for i, (f, v, loss) in enumerate(zip(fit_accuracy, val_accuracy, val_loss))]


def test_a_wide_gap_is_overfitting_with_its_numbers():
    verdict = fit_verdict(history([0.6, 0.8, 0.95], [0.55, 0.62, 0.63], [1.2, 1.1, 1.15]))
    assert verdict.verdict == OVERFITTING
    assert abs(verdict.evidence["gap"] - 0.32) < 1e-9
    assert verdict.evidence["best_epoch"] == 2
    assert "0.320" in verdict.reason


def test_rising_validation_loss_after_its_minimum_is_overfitting():
    verdict = fit_verdict(history([0.6, 0.66, 0.70, 0.72], [0.6, 0.64, 0.65, 0.64],
                                  [1.0, 0.8, 0.9, 1.0]))
    assert verdict.verdict == OVERFITTING
    assert abs(verdict.evidence["val_loss_rise_after_best"] - 0.25) < 1e-9


def test_close_curves_still_falling_are_underfitting():
    verdict = fit_verdict(history([0.3, 0.36, 0.41], [0.29, 0.35, 0.40], [1.9, 1.7, 1.6]))
    assert verdict.verdict == UNDERFITTING
    assert "still falling" in verdict.reason


def test_accuracy_near_chance_is_underfitting():
    verdict = fit_verdict(history([0.11, 0.12, 0.12], [0.1, 0.11, 0.1], [2.3, 2.3, 2.31]),
                          chance_accuracy=0.1)
    assert verdict.verdict == UNDERFITTING and "chance" in verdict.reason


def test_small_gap_and_flat_validation_loss_is_a_good_fit():
    verdict = fit_verdict(history([0.6, 0.66, 0.68, 0.69], [0.6, 0.64, 0.65, 0.65],
                                  [1.0, 0.95, 0.94, 0.945]))
    assert verdict.verdict == GOOD_FIT


def test_no_validation_metrics_is_unknown():
    assert fit_verdict([{"epoch": 1, "train_loss": 1.0}]).verdict == "unknown"
