"""Threshold policies and curves on constructed scores, checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cnnlab._util import CnnlabError
from cnnlab.diagnose.thresholds import (
    PolicySettings,
    binary_curves,
    choose_threshold,
    confusion_at,
    threshold_report,
    threshold_sweep,
)


def score_vectors(seed: int, positives: int, negatives: int, ties: bool = False):
    """Overlapping positive/negative scores; ``ties`` rounds them so thresholds repeat."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.beta(4, 2, positives), rng.beta(2, 4, negatives)])
    if ties:
        scores = np.round(scores, 1)
    targets = np.concatenate([np.ones(positives, int), np.zeros(negatives, int)])
    order = rng.permutation(len(targets))
    return targets[order], scores[order]


def direct_counts(targets, scores, threshold):
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (targets == 1)))
    fp = int(np.sum(flagged & (targets == 0)))
    return tp, fp, int(np.sum(targets == 1)) - tp, int(np.sum(targets == 0)) - fp


def direct_table(targets, scores):
    """Every distinct score as threshold, highest first, with rates computed one by one."""
    rows = []
    for threshold in sorted(set(scores.tolist()), reverse=True):
        tp, fp, fn, tn = direct_counts(targets, scores, threshold)
        rows.append({"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                     "precision": tp / (tp + fp), "recall": tp / (tp + fn),
                     "specificity": tn / (tn + fp), "f1": 2 * tp / (2 * tp + fp + fn)})
    return rows


def direct_policy(name, targets, scores, settings):
    rows = direct_table(targets, scores)  # highest threshold first: ties go to the first
    rate = settings.defect_rate
    if name == "max_f1":
        best = max(r["f1"] for r in rows)
        return next(r for r in rows if r["f1"] == best)["threshold"]
    if name == "min_recall":
        return next(r for r in rows if r["recall"] >= settings.min_recall)["threshold"]
    if name == "min_precision":
        meeting = [r for r in rows if r["precision"] >= settings.min_precision]
        if not meeting:
            best = max(r["precision"] for r in rows)
            return [r for r in rows if r["precision"] == best][-1]["threshold"]
        best_recall = max(r["recall"] for r in meeting)
        return next(r for r in meeting if r["recall"] == best_recall)["threshold"]
    costs = [settings.cost_escape * rate * (1 - r["recall"])
             + settings.cost_false_alarm * (1 - rate) * (1 - r["specificity"]) for r in rows]
    return rows[int(np.argmin(costs))]["threshold"]


CASES = [
    # (seed, positives, negatives, ties, settings)
    (0, 30, 70, False, PolicySettings(defect_rate=0.3)),
    (1, 12, 200, False, PolicySettings(defect_rate=0.01, min_recall=0.9, min_precision=0.5,
                                       cost_escape=100, cost_false_alarm=1)),
    (2, 50, 50, True, PolicySettings(defect_rate=0.5, min_recall=0.8, min_precision=0.8)),
    (3, 8, 40, True, PolicySettings(defect_rate=0.05, min_recall=0.99, min_precision=0.99,
                                    cost_escape=1, cost_false_alarm=5)),
]


@pytest.mark.parametrize("seed, positives, negatives, ties, settings", CASES)
@pytest.mark.parametrize("policy", ["max_f1", "min_recall", "min_precision", "min_cost"])
def test_each_policy_picks_the_threshold_a_direct_search_picks(seed, positives, negatives, ties,
                                                               settings, policy):
    targets, scores = score_vectors(seed, positives, negatives, ties)
    choice = choose_threshold(policy, targets, scores, settings)
    assert choice.threshold == direct_policy(policy, targets, scores, settings)


@pytest.mark.parametrize("seed, positives, negatives, ties, settings", CASES)
def test_escapes_and_discards_on_test_match_a_direct_count(seed, positives, negatives, ties,
                                                           settings):
    val_targets, val_scores = score_vectors(seed, positives, negatives, ties)
    test_targets, test_scores = score_vectors(seed + 100, positives, negatives, ties)
    report = threshold_report(val_targets, val_scores, test_targets, test_scores, settings)
    rate, parts = settings.defect_rate, settings.parts
    assert [p.name for p in report.policies] == ["max_f1", "min_recall", "min_precision",
                                                 "min_cost", "fixed"]
    for policy in report.policies:
        tp, fp, fn, tn = direct_counts(test_targets, test_scores, policy.threshold)
        assert (policy.test["tp"], policy.test["fp"], policy.test["fn"], policy.test["tn"]) == \
            (tp, fp, fn, tn)
        assert policy.test["matrix"] == [[tn, fp], [fn, tp]]
        assert policy.escapes_per_parts == pytest.approx(parts * rate * fn / (tp + fn))
        assert policy.discards_per_parts == pytest.approx(parts * (1 - rate) * fp / (fp + tn))
        vtp, vfp, vfn, vtn = direct_counts(val_targets, val_scores, policy.threshold)
        assert policy.validation["recall"] == pytest.approx(vtp / (vtp + vfn))
    recall_policy = report.policy("min_recall")
    assert recall_policy.met_on_test == (recall_policy.test["recall"] >= settings.min_recall)


def test_a_missed_recall_target_says_by_how_much():
    # Validation positives all score >= 0.5; one of four test positives scores 0.2 and escapes.
    val_targets = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    val_scores = np.array([0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1])
    test_targets = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    test_scores = np.array([0.9, 0.8, 0.6, 0.2, 0.45, 0.3, 0.2, 0.1])
    settings = PolicySettings(defect_rate=0.1, min_recall=0.99)
    policy = threshold_report(val_targets, val_scores, test_targets, test_scores,
                              settings).policy("min_recall")
    assert policy.threshold == 0.5
    assert policy.met_on_validation is True and policy.met_on_test is False
    assert policy.escapes_per_parts == pytest.approx(10_000 * 0.1 * 0.25)
    assert "misses the target 0.99 by 0.2400" in policy.note
    assert "1 of 4 test positives" in policy.note
    assert "validation has 4 positives" in policy.note


def test_an_unreachable_precision_target_is_marked_missed():
    targets = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.5, 0.5, 0.1, 0.1])
    choice = choose_threshold("min_precision", targets, scores,
                              PolicySettings(defect_rate=0.5, min_precision=0.9))
    assert choice.met_on_validation is False
    assert "no threshold reaches precision 0.9" in choice.note


@pytest.mark.parametrize("seed, ties", [(0, False), (4, True)])
def test_sweep_matches_sklearn_precision_recall_and_roc_at_every_threshold(seed, ties):
    targets, scores = score_vectors(seed, 40, 90, ties)
    sweep = threshold_sweep(targets, scores)
    rows = direct_table(targets, scores)
    assert sweep.threshold.tolist() == [r["threshold"] for r in rows]
    for column in ("tp", "fp", "fn", "tn", "precision", "recall", "specificity", "f1"):
        np.testing.assert_allclose(getattr(sweep, column), [r[column] for r in rows])

    precision, recall, thresholds = precision_recall_curve(targets, scores)
    by_threshold = dict(zip(sweep.threshold.tolist(), zip(sweep.precision, sweep.recall)))
    for p, r, t in zip(precision[:-1], recall[:-1], thresholds):
        assert by_threshold[t] == pytest.approx((p, r))
    fpr, tpr, roc_thresholds = roc_curve(targets, scores, drop_intermediate=False)
    for f, t, threshold in zip(fpr, tpr, roc_thresholds):
        if math.isfinite(threshold) and threshold in by_threshold:
            index = sweep.threshold.tolist().index(threshold)
            assert (1 - sweep.specificity[index], sweep.recall[index]) == pytest.approx((f, t))


def test_curves_and_areas_are_sklearns():
    targets, scores = score_vectors(5, 25, 75)
    curves = binary_curves(targets, scores)
    precision, recall, thresholds = precision_recall_curve(targets, scores)
    fpr, tpr, _ = roc_curve(targets, scores)
    np.testing.assert_allclose(curves["pr"]["precision"], precision)
    np.testing.assert_allclose(curves["pr"]["recall"], recall)
    np.testing.assert_allclose(curves["pr"]["thresholds"], thresholds)
    np.testing.assert_allclose(curves["roc"]["fpr"], fpr)
    np.testing.assert_allclose(curves["roc"]["tpr"], tpr)
    assert curves["average_precision"] == pytest.approx(average_precision_score(targets, scores))
    assert curves["roc_auc"] == pytest.approx(roc_auc_score(targets, scores))
    assert curves["positive_rate"] == pytest.approx(0.25)


def test_confusion_at_a_threshold_counts_parts_at_or_above_it():
    confusion = confusion_at([1, 1, 0, 0, 1], [0.5, 0.4, 0.5, 0.1, 0.9], 0.5)
    assert confusion.matrix == [[1, 1], [1, 2]]
    assert confusion.precision == pytest.approx(2 / 3)
    assert confusion.recall == pytest.approx(2 / 3)
    assert confusion.specificity == pytest.approx(0.5)


@pytest.mark.parametrize("targets, scores, message", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "no positives"),
    ([1, 1], [0.1, 0.2], "no negatives"),
    ([1, 0], [0.1], "2 targets but 1 scores"),
    ([1, 2], [0.1, 0.2], "targets must be 0 or 1"),
    ([1, 0], [float("nan"), 0.2], "NaN or infinite"),
])
def test_bad_scores_raise_clear_errors(targets, scores, message):
    with pytest.raises(CnnlabError, match=message):
        threshold_sweep(targets, scores)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(CnnlabError, match="min_recall must be"):
        PolicySettings(defect_rate=0.1, min_recall=1.5)
    with pytest.raises(CnnlabError, match="defect_rate must be"):
        PolicySettings(defect_rate=0.0)
    with pytest.raises(CnnlabError, match="unknown"):
        choose_threshold("max_accuracy", [1, 0], [0.6, 0.4], PolicySettings(defect_rate=0.1))
