"""The diagnose layer: reading histories, gradients and activations; verdicts with evidence."""

from cnnlab.diagnose.fit import (
    GOOD_FIT,
    OVERFITTING,
    UNDERFITTING,
    FitThresholds,
    FitVerdict,
    fit_verdict,
)
from cnnlab.diagnose.gradients import GradientThresholds, Verdict, diagnose, diagnose_run
from cnnlab.diagnose.monitor import GradientMonitor, MonitorData, load_monitor

__all__ = [
    "GOOD_FIT",
    "OVERFITTING",
    "UNDERFITTING",
    "FitThresholds",
    "FitVerdict",
    "GradientMonitor",
    "GradientThresholds",
    "MonitorData",
    "Verdict",
    "diagnose",
    "diagnose_run",
    "fit_verdict",
    "load_monitor",
]
