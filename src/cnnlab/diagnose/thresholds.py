"""A binary classifier judged at every threshold, and thresholds chosen by a stated policy.

A score ``s`` (a probability, or any number that grows with "positive")
flags a part as positive (defective) when ``s >= threshold``, the
convention of scikit-learn's curves. A threshold is chosen on the
validation split by one of four policies and then applied, unchanged, to
the test split, which alone says how the choice holds up:

- ``max_f1``: the threshold with the highest F1 on validation;
- ``min_recall``: the highest threshold whose validation recall is at least
  ``min_recall`` (at most ``1 - min_recall`` of defects escape), i.e. the
  fewest false alarms that still catch that share of defects;
- ``min_precision``: among thresholds whose validation precision is at least
  ``min_precision``, the one with the highest recall (then the higher
  threshold); when none reaches it, the most precise one, marked as missed;
- ``min_cost``: the lowest expected cost per part,
  ``cost_escape * rate * (1 - recall) + cost_false_alarm * (1 - rate) * (1 - specificity)``,
  where ``rate`` is the defect rate of the parts the line sees (not the
  validation split's class balance).

Ties go to the higher threshold (fewer parts flagged). Candidate thresholds
are the distinct validation scores, so every candidate flags at least one
part. A ``fixed`` reference row applies a given threshold (0.5 on
probabilities: what accuracy and an argmax report) without choosing it.

Escapes and discards are stated per 10,000 parts at ``rate``:
``escapes = parts * rate * (1 - recall)`` defective parts pass, and
``discards = parts * (1 - rate) * (1 - specificity)`` good parts are thrown away.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cnnlab._util import CnnlabError

POLICIES = ("max_f1", "min_recall", "min_precision", "min_cost")
PARTS = 10_000


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold; ``matrix`` is ``[[tn, fp], [fn, tp]]`` (rows: true class)."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    @property
    def precision(self) -> float:
        # No part flagged: nothing flagged was wrong. scikit-learn uses the same convention.
        flagged = self.tp + self.fp
        return self.tp / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.positives if self.positives else math.nan

    @property
    def specificity(self) -> float:
        return self.tn / self.negatives if self.negatives else math.nan

    @property
    def false_alarm_rate(self) -> float:
        return 1.0 - self.specificity

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0

    @property
    def matrix(self) -> list[list[int]]:
        return [[self.tn, self.fp], [self.fn, self.tp]]

    def escapes(self, rate: float, parts: int = PARTS) -> float:
        """Defective parts that pass, per ``parts`` parts at defect rate ``rate``."""
        return parts * rate * (1.0 - self.recall)

    def discards(self, rate: float, parts: int = PARTS) -> float:
        """Good parts thrown away, per ``parts`` parts at defect rate ``rate``."""
        return parts * (1.0 - rate) * self.false_alarm_rate

    def expected_cost(self, rate: float, cost_escape: float, cost_false_alarm: float) -> float:
        """Expected cost per part at defect rate ``rate``."""
        return (cost_escape * rate * (1.0 - self.recall)
                + cost_false_alarm * (1.0 - rate) * self.false_alarm_rate)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "tn": self.tn, "precision": self.precision, "recall": self.recall,
                "specificity": self.specificity, "f1": self.f1, "matrix": self.matrix}


def _as_arrays(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Targets as 0/1 integers and scores as floats; both classes must be present."""
    if hasattr(targets, "detach"):
        targets = targets.detach().cpu().numpy()
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().float().numpy()
    y = np.asarray(targets).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(y) != len(s):
        raise CnnlabError(f"{len(y)} targets but {len(s)} scores; each sample needs one of each")
    if not np.isin(y, (0, 1)).all():
        raise CnnlabError(f"targets must be 0 or 1, got values {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(s).all():
        raise CnnlabError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite; "
                          "the model's outputs are broken (see cnnlab diagnose)")
    y = y.astype(np.int64)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        kind = "positives" if positives == 0 else "negatives"
        raise CnnlabError(f"the scores have no {kind} among {len(y)} samples; precision, "
                          "recall and thresholds need both classes")
    return y, s


def confusion_at(targets: Any, scores: Any, threshold: float) -> Confusion:
    """Counts when parts with ``score >= threshold`` are flagged as positive."""
    y, s = _as_arrays(targets, scores)
    flagged = s >= threshold
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    return Confusion(float(threshold), tp, fp, int(y.sum()) - tp, int((y == 0).sum()) - fp)


@dataclass
class ThresholdSweep:
    """Counts and rates at every distinct score used as a threshold, highest threshold first."""

    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    @property
    def fn(self) -> np.ndarray:
        return self.positives - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.negatives - self.fp

    @property
    def precision(self) -> np.ndarray:
        return self.tp / (self.tp + self.fp)  # every threshold flags at least one part

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.positives

    @property
    def specificity(self) -> np.ndarray:
        return self.tn / self.negatives

    @property
    def f1(self) -> np.ndarray:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    def confusion(self, index: int) -> Confusion:
        return Confusion(float(self.threshold[index]), int(self.tp[index]), int(self.fp[index]),
                         int(self.fn[index]), int(self.tn[index]))

    def expected_cost(self, rate: float, cost_escape: float, cost_false_alarm: float
                      ) -> np.ndarray:
        return (cost_escape * rate * (1 - self.recall)
                + cost_false_alarm * (1 - rate) * (1 - self.specificity))


def threshold_sweep(targets: Any, scores: Any) -> ThresholdSweep:
    """Precision, recall, F1 and specificity at every distinct score as threshold.

    The counts come from scikit-learn's ROC computation without dropping
    points (``roc_curve(drop_intermediate=False)``), minus its first point,
    a threshold above every score that flags nothing.
    """
    from sklearn.metrics import roc_curve

    y, s = _as_arrays(targets, scores)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    keep = np.isfinite(thresholds) & (thresholds <= s.max())
    tp = np.rint(tpr[keep] * positives).astype(np.int64)
    fp = np.rint(fpr[keep] * negatives).astype(np.int64)
    return ThresholdSweep(thresholds[keep].astype(np.float64), tp, fp, positives, negatives)


def binary_curves(targets: Any, scores: Any) -> dict[str, Any]:
    """Precision-recall and ROC curves with their areas, from scikit-learn.

    ``average_precision`` is the step-wise area under the PR curve (no
    interpolation), ``roc_auc`` the area under the ROC curve. The baseline of
    average precision is the positive share (``positive_rate``), not 0.5.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    y, s = _as_arrays(targets, scores)
    precision, recall, pr_thresholds = precision_recall_curve(y, s)
    fpr, tpr, roc_thresholds = roc_curve(y, s)
    return {
        "average_precision": float(average_precision_score(y, s)),
        "roc_auc": float(roc_auc_score(y, s)),
        "positive_rate": float(y.mean()),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "pr": {"precision": precision.tolist(), "recall": recall.tolist(),
               "thresholds": pr_thresholds.tolist()},
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                "thresholds": [t if math.isfinite(t) else None for t in roc_thresholds.tolist()]},
    }


@dataclass
class PolicySettings:
    """Targets and costs for the threshold policies, and the defect rate of the line.

    ``defect_rate`` is the share of defective parts the line sees; escapes,
    discards and the cost policy use it. Costs are in any one unit (only
    their ratio matters); the defaults say an escaped defect costs ten
    false alarms.
    """

    defect_rate: float
    min_recall: float = 0.99
    min_precision: float = 0.95
    cost_escape: float = 10.0
    cost_false_alarm: float = 1.0
    fixed_threshold: float | None = 0.5
    parts: int = PARTS

    def __post_init__(self) -> None:
        checks = [("defect_rate", self.defect_rate, 0.0, 1.0), ("min_recall", self.min_recall,
                  0.0, 1.0), ("min_precision", self.min_precision, 0.0, 1.0)]
        for name, value, low, high in checks:
            if not low < value <= high or (name == "defect_rate" and value >= 1):
                raise CnnlabError(f"{name} must be in ({low}, {high}], got {value}")
        for name in ("cost_escape", "cost_false_alarm"):
            if not getattr(self, name) >= 0:
                raise CnnlabError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cost_escape == 0 and self.cost_false_alarm == 0:
            raise CnnlabError("cost_escape and cost_false_alarm are both 0; give at least one "
                              "a positive cost")


@dataclass
class PolicyChoice:
    """The threshold a policy picks on validation, and whether validation met its target."""

    name: str
    rule: str
    threshold: float
    target: float | None
    met_on_validation: bool | None
    note: str = ""


def choose_threshold(policy: str, targets: Any, scores: Any, settings: PolicySettings
                     ) -> PolicyChoice:
    """The threshold ``policy`` (one of :data:`POLICIES`) picks on these scores."""
    sweep = threshold_sweep(targets, scores)
    rate = settings.defect_rate
    if policy == "max_f1":
        index = int(np.argmax(sweep.f1))  # first maximum = highest threshold among ties
        return PolicyChoice(policy, "highest F1 on validation", float(sweep.threshold[index]),
                            None, None)
    if policy == "min_recall":
        target = settings.min_recall
        meeting = np.flatnonzero(sweep.recall >= target - 1e-12)
        index = int(meeting[0])  # thresholds descend: the first one meeting it flags least
        note = ""
        step = 1 / sweep.positives
        if 1 - target < step:
            note = (f"validation has {sweep.positives} positives, so recall moves in steps of "
                    f"{step:.3f}; a target of {target:g} means catching every validation "
                    "positive, and the threshold sits at the lowest-scoring one")
        return PolicyChoice(policy, f"recall >= {target:g} on validation, fewest false alarms",
                            float(sweep.threshold[index]), target, True, note)
    if policy == "min_precision":
        target = settings.min_precision
        precision = sweep.precision
        meeting = np.flatnonzero(precision >= target - 1e-12)
        rule = f"precision >= {target:g} on validation, highest recall"
        if len(meeting):
            best_recall = sweep.recall[meeting].max()
            index = int(meeting[sweep.recall[meeting] >= best_recall - 1e-12][0])
            return PolicyChoice(policy, rule, float(sweep.threshold[index]), target, True)
        best = precision.max()
        index = int(np.flatnonzero(precision >= best - 1e-12)[-1])  # most precise, most recall
        return PolicyChoice(policy, rule, float(sweep.threshold[index]), target, False,
                            f"no threshold reaches precision {target:g} on validation (best "
                            f"{best:.3f}); the most precise threshold is used")
    if policy == "min_cost":
        cost = sweep.expected_cost(rate, settings.cost_escape, settings.cost_false_alarm)
        index = int(np.argmin(cost))
        ratio = (settings.cost_escape / settings.cost_false_alarm
                 if settings.cost_false_alarm else math.inf)
        return PolicyChoice(policy, f"lowest expected cost (escape {settings.cost_escape:g}, "
                            f"false alarm {settings.cost_false_alarm:g}: ratio {ratio:g})",
                            float(sweep.threshold[index]), None, None)
    raise CnnlabError(f"threshold policy {policy!r} is unknown; use one of {', '.join(POLICIES)}")


@dataclass
class PolicyResult:
    """One policy: its threshold (from validation) and what it does on test."""

    name: str
    rule: str
    threshold: float
    target: float | None
    met_on_validation: bool | None
    validation: dict[str, Any]
    test: dict[str, Any]
    escapes_per_parts: float
    discards_per_parts: float
    expected_cost_per_part: float
    met_on_test: bool | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ThresholdReport:
    """Curves on validation and test, and every policy chosen on validation, applied to test."""

    settings: dict[str, Any]
    defect_rate_source: str
    validation_curves: dict[str, Any]
    test_curves: dict[str, Any]
    policies: list[PolicyResult] = field(default_factory=list)

    def policy(self, name: str) -> PolicyResult:
        for result in self.policies:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """JSON-ready; ``curves=False`` leaves out the curve points (the areas stay)."""
        def brief(block: dict[str, Any]) -> dict[str, Any]:
            return block if curves else {k: v for k, v in block.items() if k not in ("pr", "roc")}

        return {"settings": self.settings, "defect_rate_source": self.defect_rate_source,
                "validation": brief(self.validation_curves), "test": brief(self.test_curves),
                "policies": [p.to_dict() for p in self.policies]}


def threshold_report(val_targets: Any, val_scores: Any, test_targets: Any, test_scores: Any,
                     settings: PolicySettings, *, defect_rate_source: str = "given"
                     ) -> ThresholdReport:
    """Choose each policy's threshold on validation and report it on test.

    Example::

        settings = PolicySettings(defect_rate=0.29, min_recall=0.99)
        report = threshold_report(val_y, val_p, test_y, test_p, settings)
        report.policy("min_recall").escapes_per_parts   # defects passed per 10,000 parts
    """
    report = ThresholdReport(asdict(settings), defect_rate_source,
                             binary_curves(val_targets, val_scores),
                             binary_curves(test_targets, test_scores))
    rate, parts = settings.defect_rate, settings.parts
    choices = [choose_threshold(name, val_targets, val_scores, settings) for name in POLICIES]
    if settings.fixed_threshold is not None:
        choices.append(PolicyChoice("fixed", f"fixed threshold {settings.fixed_threshold:g} "
                                    "(not chosen; what accuracy reports)",
                                    settings.fixed_threshold, None, None))
    for choice in choices:
        validation = confusion_at(val_targets, val_scores, choice.threshold)
        test = confusion_at(test_targets, test_scores, choice.threshold)
        met_on_test, note = _test_verdict(choice, test, settings)
        report.policies.append(PolicyResult(
            name=choice.name, rule=choice.rule, threshold=choice.threshold, target=choice.target,
            met_on_validation=choice.met_on_validation, validation=validation.to_dict(),
            test=test.to_dict(), escapes_per_parts=test.escapes(rate, parts),
            discards_per_parts=test.discards(rate, parts),
            expected_cost_per_part=test.expected_cost(rate, settings.cost_escape,
                                                      settings.cost_false_alarm),
            met_on_test=met_on_test, note="; ".join(n for n in (choice.note, note) if n)))
    return report


def _test_verdict(choice: PolicyChoice, test: Confusion, settings: PolicySettings
                  ) -> tuple[bool | None, str]:
    """Whether the target chosen on validation holds on test, and by how much it misses."""
    rate, parts = settings.defect_rate, settings.parts
    if choice.name == "min_recall":
        if test.recall >= settings.min_recall - 1e-12:
            return True, ""
        allowed = parts * rate * (1 - settings.min_recall)
        return False, (f"test recall {test.recall:.4f} misses the target {settings.min_recall:g} "
                       f"by {settings.min_recall - test.recall:.4f}: {test.fn} of "
                       f"{test.positives} test positives score below the threshold, "
                       f"{test.escapes(rate, parts):.1f} escapes per {parts:,} parts instead "
                       f"of at most {allowed:.1f}")
    if choice.name == "min_precision":
        if test.precision >= settings.min_precision - 1e-12:
            return True, ""
        shortfall = settings.min_precision - test.precision
        return False, (f"test precision {test.precision:.4f} misses the target "
                       f"{settings.min_precision:g} by {shortfall:.4f}")
    return None, ""
