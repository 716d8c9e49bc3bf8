"""The diagnose layer: reading histories, gradients and activations; verdicts with evidence."""

from cnnlab.diagnose.fit import (
    GOOD_FIT,
    OVERFITTING,
    UNDERFITTING,
    FitThresholds,
    FitVerdict,
    fit_verdict,
)

__all__ = ["GOOD_FIT", "OVERFITTING", "UNDERFITTING", "FitThresholds", "FitVerdict",
           "fit_verdict"]
